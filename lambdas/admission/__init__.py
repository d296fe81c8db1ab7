"""The policy admission webhook for Argo Workflows (`cct serve admission`)."""
