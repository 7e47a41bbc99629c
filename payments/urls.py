from django.urls import path

from payments import api

urlpatterns = [
    path("checkout", api.CheckoutView.as_view(), name="payments-checkout"),
    path(
        "sessions/<str:payment_session_id>",
        api.PaymentSessionView.as_view(),
        name="payments-session",
    ),
    path("stripe/webhook", api.StripeWebhookView.as_view(), name="payments-stripe-webhook"),
]
