"""The CA API's handlers, one module per group of endpoints, routed by `core._ROUTES`."""
