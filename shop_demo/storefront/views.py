"""The storefront page. All searching happens in the browser, against the REST API.

The search lives in the page's URL (``/?q=red+mug&category=mug&sort=price&page=2``), so a link
can be shared and Back and Forward work. The script renders a deep link's results on load, with
the same code that renders a new search and a Back: the page stays an API client and nothing
is rendered twice in two languages. This view only fills the form in from the URL and, when
the URL holds a search, starts the page in its loading state, so a deep link never flashes the
welcome text before its results.
"""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import ensure_csrf_cookie

# Results per page; the API's own default (CLIP_SEARCH_API["PAGE_SIZE"]) is the same.
PAGE_SIZE = 24

# The URL's own parameters; every other one the page reads is a facet's (CLIP_SEARCH_API["FACETS"]).
SEARCH_PARAMS = ("q", "like", "picture")

# Every word the script shows a shopper, translated here; {placeholders} are filled in by
# storefront.js. None names the software behind the search: the API's own error messages are
# for developers (they may name the library or the imaging library), so the script shows the
# one below for the error's code instead.
STRINGS = {
    "pageTitle": _("Demo shop"),
    "pageTitleQuery": _("“{query}” – Demo shop"),
    "popular": _("Popular:"),
    "trySuggestions": _("Try:"),
    "searching": _("Searching…"),
    "resultsForText": _("{count} results for “{query}”"),
    "resultsForImage": _("{count} results for your picture"),
    "resultsForImageAndText": _("{count} results for your picture and “{query}”"),
    "resultsLike": _("{count} products like “{title}”"),
    "resultsLikeProduct": _("{count} products like the one you chose"),
    "pageOf": _("Page {page} of {pages}"),
    "didYouMean": _("Showing results for {corrected}. Search instead for {original}"),
    "truncated": _("Your search was long, so only its beginning was used."),
    "relaxed": _("No product matches every word, so these match some of them."),
    "capped": _("More products may match: refine your search to see others."),
    "noResults": _("No products found for “{query}”."),
    "noResultsAtAll": _("No products found."),
    "unknownWords": _("No product mentions {words}."),
    "noResultsFilters": _("Fewer filters may help:"),
    "clearFilters": _("Clear all filters"),
    "pictureAgain": _("Choose your picture again to see these results."),
    "degraded": _("Some search methods are unavailable right now, so results may be less precise."),
    "inStock": _("In stock"),
    "outOfStock": _("Out of stock"),
    "filters": _("Filters"),
    "filtersActive": _("Filters ({count})"),
    "showAllValues": _("Show all {count}"),
    "showFewerValues": _("Show fewer"),
    "removeFilter": _("Remove filter {filter}"),
    "chip": _("{facet}: {value}"),
    "minPriceChip": _("From {price}"),
    "maxPriceChip": _("Up to {price}"),
    "suggestionKinds": {"brand": _("Brand"), "category": _("Category"), "title": ""},
    "addToCart": _("Add to cart"),
    "added": _("Added ✓"),
    # Errors, by the API's error code; "serverError" for any other.
    "notAnImage": _("Please choose an image file (JPEG, PNG, WebP…)."),
    "brokenImage": _("This picture could not be read. Please try another one."),
    "imageTooLarge": _("This picture is too large. Please choose a smaller one."),
    "imageSearchUnavailable": _("Search by picture is unavailable right now. Please search by words."),
    "throttled": _("Too many searches in a short time. Please wait a moment and try again."),
    "unavailable": _("Search is busy right now. Please try again in a few seconds."),
    "notIndexed": _("This product cannot be compared yet. Please try another one."),
    "notFound": _("This product is no longer available."),
    "invalid": _("This search could not be understood. Please change it and try again."),
    "networkError": _("The shop could not be reached. Check your connection and try again."),
    "serverError": _("Something went wrong on our side (HTTP {status}). Please try again."),
}


def facet_names() -> list[str]:
    """The query parameters that select a facet value: the shop declares them for the API."""
    return list(getattr(settings, "CLIP_SEARCH_API", {}).get("FACETS", {}))


@ensure_csrf_cookie  # the image search POSTs; a logged-in visitor's session needs the token
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "storefront/index.html", {
        "strings": STRINGS,
        "config": {"facets": facet_names(), "pageSize": PAGE_SIZE},
        "q": request.GET.get("q", ""),
        "min_price": request.GET.get("min_price", ""),
        "max_price": request.GET.get("max_price", ""),
        "searching": any(request.GET.get(name) for name in SEARCH_PARAMS),
    })
