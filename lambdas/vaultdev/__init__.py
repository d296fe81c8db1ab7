"""A local stand-in for HashiCorp Vault covering exactly the API paths CCT uses
(`cct serve vault-dev`); see lambdas.vaultdev.server."""
