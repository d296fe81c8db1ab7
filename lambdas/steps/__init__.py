"""Remediation workflow steps (`cct step NAME`), the action registry and the playbooks."""
