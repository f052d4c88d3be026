"""One module per additional family adapter; each registers itself with `gazekit.models.adapters.register`."""
