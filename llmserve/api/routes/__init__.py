"""Route modules: parse, call a service, render. No business rules here."""
