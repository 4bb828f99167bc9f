"""quart-trio apps: the public one (webhooks, web chat) and the admin one."""
