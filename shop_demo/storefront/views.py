"""The storefront page. All searching happens in the browser, against the REST API."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import ensure_csrf_cookie

from shop_demo.catalog.models import Category

# The script's words, translated here; {placeholders} are filled in by storefront.js.
STRINGS = {
    "searching": _("Searching…"),
    "resultsForText": _("{count} results for “{query}”"),
    "resultsForImage": _("{count} results for your picture"),
    "resultsForImageAndText": _("{count} results for your picture and “{query}”"),
    "resultsLike": _("{count} products like “{title}”"),
    "degraded": _("Some search methods are unavailable right now, so results may be less precise."),
    "inStock": _("In stock"),
    "outOfStock": _("Out of stock"),
    "notAnImage": _("Please choose an image file (JPEG, PNG, WebP…)."),
    "networkError": _("The shop could not be reached. Check your connection and try again."),
    "serverError": _("Something went wrong on our side (HTTP {status}). Please try again."),
}


@ensure_csrf_cookie  # the image search POSTs; a logged-in visitor's session needs the token
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "storefront/index.html", {
        "categories": Category.objects.order_by("name"), "strings": STRINGS})
