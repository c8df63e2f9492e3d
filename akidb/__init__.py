"""AkiDB gateway."""
