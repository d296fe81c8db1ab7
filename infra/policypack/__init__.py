"""CCT's CrossGuard policy pack (run it with `pulumi preview --policy-pack infra/policypack`)."""
