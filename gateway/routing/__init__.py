"""Routing: live backend state, pure policies over it, and the router that applies them."""
