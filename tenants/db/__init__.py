"""The PostgreSQL backend Atlas runs on: Django's, with the row-level-security scope applied."""
