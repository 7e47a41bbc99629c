"""The admin index as an operations dashboard: numbers (selectors), SVG charts (charts),
links to the admin lists behind every number (links), the view, and the status report that
`atlas_status` and the dashboard's banner share (status)."""
