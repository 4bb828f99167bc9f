"""Blueprints the core mounts besides the channels' own: one line per feature.

``public_blueprints`` go on the public bind (webhooks, web chat, developer API);
``admin_blueprints`` on the admin bind (127.0.0.1 by default: the admin UI). Both are called
for every app the daemon builds (at start-up and after each live reload), so a blueprint factory
must be cheap and keep no state of its own beyond what ``services`` holds.
"""

from __future__ import annotations

from quart import Blueprint

from gateway.services import Services


def public_blueprints(services: Services) -> list[Blueprint]:
    blueprints: list[Blueprint] = []
    from gateway.http import api  # the developer API, /api/v1

    blueprints.append(api.blueprint(services))
    return blueprints


def admin_blueprints(services: Services) -> list[Blueprint]:
    from gateway.http.ui.app import blueprints as admin_ui
    from gateway.http.ui.privacy_app import sections as privacy_desk  # privacy desk, contacts

    blueprints: list[Blueprint] = []
    blueprints.extend(admin_ui(services, sections=privacy_desk()))
    return blueprints
