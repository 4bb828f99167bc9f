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
    from gateway import heap
    from gateway.devapi import feature as devapi
    from gateway.http.ui import app as admin_ui
    from gateway.privacy import audit_jobs, dsr_daemon, record_jobs, retention
    from gateway.store import bodies_job

    audit_jobs.install(services)  # the audit head in the system log, daily
    bodies_job.install(services)  # legacy plain message text sealed once
    retention.install(services)  # retention sweeps
    dsr_daemon.install(services)  # data-subject requests: /mydata, /forgetme, deadlines
    record_jobs.install(services)  # backups, incident reminders
    devapi.install(services)  # developer API: /start, /unsubscribe, code housekeeping
    admin_ui.install(services)  # admin UI: search indexer
    heap.install(services)  # the C heap's free pages back to the system, every minute
