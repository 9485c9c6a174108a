"""`serve`: the HTTP API and the search page over the served index. Imports only `retrieval` and `core`."""
