"""Privacy: residency policy, PII redaction (and, later, retention, requests, consent, audit)."""
