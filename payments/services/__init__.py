"""Payment writes, one module per topic; callers import from the topic module.

- checkout: start a Stripe Checkout (Stripe first, then our row)
- state: the payment state machine applied to rows (conditional UPDATE + outbox event)
- webhooks: verify, store and process Stripe's events; completion replays deferred refunds
- reconciliation: re-read pending payments from Stripe; re-run stored events
"""
