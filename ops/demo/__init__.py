"""The first hour: a webhook inspector the demo tenant delivers to, and the demo's token
endpoint (the part of a customer's server that mints realtime tokens for its pages)."""
