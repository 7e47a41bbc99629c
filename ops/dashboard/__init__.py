"""The admin index as an operations dashboard: the apps' sections and numbers (each app's
ops module), SVG charts (charts), links to the admin lists behind every number (links), and
the status banner that `atlas_status` shares (ops.status)."""
