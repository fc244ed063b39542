"""Attack-class regression tests: one file per class, named after the class and the public
advisory it guards against; network-facing classes run against real processes."""
