"""``mesh-ca init`` flags for where the CA keys live (``[keys]`` of ca.toml).

    mesh-ca init --trust-domain example.org --dir ca --keys pkcs11 \\
        --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token-label mesh-ca \\
        --pin-env MESH_CA_HSM_PIN [--key-label-prefix meshgate-example.org]

Every flag is checked before anything is made; errors name the flag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from mesh_ca.keys_config import KeysConfig

__all__ = ["add_keys_flags", "keys_config"]

_PKCS11_FLAGS = ("pkcs11_module", "token_label", "pin_env", "pin_file", "key_label_prefix")


def add_keys_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keys",
        choices=["file", "pkcs11"],
        default="file",
        help="where the root and intermediate keys live: file (root.key, intermediate.key, "
        "mode 0600; the default) or pkcs11 (generated in a PKCS#11 token, never leaving it)",
    )
    p.add_argument(
        "--pkcs11-module",
        metavar="PATH",
        help="pkcs11: the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so",
    )
    p.add_argument("--token-label", metavar="LABEL", help="pkcs11: the token's label")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument(
        "--pin-env", metavar="NAME", help="pkcs11: environment variable holding the user PIN"
    )
    pin.add_argument(
        "--pin-file",
        type=Path,
        metavar="FILE",
        help="pkcs11: file (mode 0600) whose first line is the user PIN",
    )
    p.add_argument(
        "--key-label-prefix",
        metavar="PREFIX",
        help="pkcs11: key labels PREFIX-root and PREFIX-intermediate "
        "(default meshgate-TRUST_DOMAIN)",
    )


def keys_config(args: argparse.Namespace, usage: Callable[[str, str], Exception]) -> KeysConfig:
    """``[keys]`` from the init flags; `usage(flag, message)` makes the usage error to raise."""
    if args.keys == "file":
        for name in _PKCS11_FLAGS:
            if getattr(args, name) is not None:
                raise usage("--" + name.replace("_", "-"), "only with --keys pkcs11")
        return KeysConfig()
    if getattr(args, "passphrase_file", None) is not None:
        raise usage("--passphrase-file", "only for --keys file (a token protects its keys)")
    if not args.pkcs11_module:
        raise usage("--pkcs11-module", "--keys pkcs11 needs the PKCS#11 module")
    module: str = args.pkcs11_module
    if "/" in module:  # a bare name is left to the dynamic loader's search path
        if not Path(module).is_file():
            raise usage("--pkcs11-module", f"{module} is not a file")
        module = str(Path(module).absolute())
    if not args.token_label:
        raise usage("--token-label", "--keys pkcs11 needs the token's label")
    if args.pin_env is None and args.pin_file is None:
        raise usage("--pin-env", "--keys pkcs11 needs --pin-env NAME or --pin-file FILE")
    if args.pin_env is not None and not os.environ.get(args.pin_env):
        raise usage("--pin-env", f"${args.pin_env} is not set (it holds the token's user PIN)")
    pin_file = args.pin_file
    if pin_file is not None:
        if not pin_file.is_file():
            raise usage("--pin-file", f"{pin_file} is not a file")
        pin_file = pin_file.absolute()  # the CA directory is built elsewhere
    prefix = args.key_label_prefix or f"meshgate-{args.trust_domain.name}"
    try:
        return KeysConfig(
            backend="pkcs11",
            module=module,
            token_label=args.token_label,
            pin_env=args.pin_env,
            pin_file=str(pin_file) if pin_file is not None else None,
            root_key_label=f"{prefix}-root",
            intermediate_key_label=f"{prefix}-intermediate",
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise usage("--keys", str(exc).splitlines()[-1].strip()) from None
