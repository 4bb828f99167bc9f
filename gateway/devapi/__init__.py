"""The developer API: projects with scoped API keys, notifications and one-time codes to end
users who subscribed in a chat (``/start <project>``), their subscriber lists, and website
form submissions. HTTP under /api/v1 (gateway.http.api, OpenAPI in gateway.devapi.openapi);
chat commands and jobs in gateway.devapi.feature; ``gateway api`` in gateway.api_cli.

This package's ``__init__`` imports nothing: gateway.config imports gateway.devapi.config.
"""
