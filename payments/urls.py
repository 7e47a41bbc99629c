from django.urls import path

from payments import api, prices_api

urlpatterns = [
    path("checkout", api.CheckoutView.as_view(), name="payments-checkout"),
    path(
        "sessions/<str:payment_session_id>",
        api.PaymentSessionView.as_view(),
        name="payments-session",
    ),
    path("prices", prices_api.AllowedPriceListView.as_view(), name="payments-prices"),
    path("prices/<str:price_id>", prices_api.AllowedPriceView.as_view(), name="payments-price"),
    path("stripe/webhook", api.StripeWebhookView.as_view(), name="payments-stripe-webhook"),
]
