"""Where each feature hooks into the running daemon: scheduled jobs and chat commands.

``install`` runs once at start-up, before the pipeline and the scheduler start. Add one line per
feature, calling a function in the feature's own module that registers what it needs::

    scheduler.every("retention sweep", 3600, functools.partial(sweep, services))
    pipeline.commands.add("/mydata", handler)

HTTP routes are mounted in :mod:`gateway.http.mounts` instead.
"""

from __future__ import annotations

from gateway.services import Services


def install(services: Services) -> None:
    from gateway.privacy import audit_jobs
    from gateway.store import bodies_job

    audit_jobs.install(services)
    bodies_job.install(services)
