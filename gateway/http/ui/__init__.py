"""The admin UI: a small server-rendered app on the admin bind (gateway.http.ui.app).

Kept free of imports: gateway.config imports :mod:`gateway.http.ui.settings` for its table.
"""
