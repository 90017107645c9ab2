"""HTTP routers: parse the request, call a service, shape the response (protocol sections 2–4)."""
