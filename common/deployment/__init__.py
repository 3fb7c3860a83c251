"""What a deployed coordinator and center share: certificates and keys, site files."""
