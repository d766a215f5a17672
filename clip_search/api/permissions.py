"""Who may use the staff endpoints: Django's model permissions, as in the admin.

``is_staff`` alone (DRF's ``IsAdminUser``) is not enough: a staff account given no permission at
all could then lift a quarantine or accept tags. Reading needs the model's ``view`` or ``change``
permission (the admin treats change as implying view); deciding needs ``change``:
``ReviewItem`` for the review queue, ``ProductTag`` for product tags. Superusers have every
permission; inactive users have none.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_permission_codename
from django.db import models
from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from clip_search.models import ProductTag, ReviewItem


def model_permission(model: type[models.Model], action: str) -> str:
    """``"clip_search.view_reviewitem"`` for ``"view"``: the name a backend's ``has_perm`` knows."""
    opts = model._meta
    return f"{opts.app_label}.{get_permission_codename(action, opts)}"


class StaffModelPermission(BasePermission):
    """Safe methods (GET, HEAD, OPTIONS) need view or change on ``model``; others need change.

    Anonymous requests are refused too, and DRF then answers "not authenticated" (401 with a
    scheme that can challenge, else 403) instead of "permission denied".
    """

    model: type[models.Model]
    read_message: Any
    decide_message: Any

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            self.message, actions = self.read_message, ("view", "change")
        else:
            self.message, actions = self.decide_message, ("change",)
        return any(user.has_perm(model_permission(self.model, action)) for action in actions)


class ReviewPermission(StaffModelPermission):
    model = ReviewItem
    read_message = _("You do not have permission to see the review queue.")
    decide_message = _("You do not have permission to approve or reject uploads.")


class TagPermission(StaffModelPermission):
    model = ProductTag
    read_message = _("You do not have permission to see product tags.")
    decide_message = _("You do not have permission to suggest, accept or reject product tags.")
