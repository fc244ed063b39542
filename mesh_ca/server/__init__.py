"""The CA HTTPS server: a pure API core (`core`), a trio shell (`http`) and `serve_main`."""
