from django.urls import path

from assessments import api

urlpatterns = [
    path("session", api.SessionUpsertView.as_view(), name="assessment-session-upsert"),
    path("session/<str:session_id>", api.SessionDetailView.as_view(), name="assessment-session"),
    path(
        "session/<str:session_id>/answers",
        api.SessionAnswersView.as_view(),
        name="assessment-session-answers",
    ),
    path("submit", api.SubmitView.as_view(), name="assessment-submit"),
    path("submissions", api.SubmissionListView.as_view(), name="assessment-submissions"),
    path(
        "submissions/<str:submission_id>",
        api.SubmissionDetailView.as_view(),
        name="assessment-submission",
    ),
    path("events", api.EventsView.as_view(), name="assessment-events"),
]
