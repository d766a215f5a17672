"""Oscar's storefront search and its dashboard product list, answered by hybrid search.

Oscar's extension point is its app configs: ``SearchConfig.ready()`` names the search page's
view and ``CatalogueDashboardConfig.ready()`` the dashboard's product list. The shop lists the
two configs of ``clip_search.contrib.oscar.configs`` instead of Oscar's (README "django-oscar");
Oscar's templates, search form,
sorting, facets and pagination stay as they are:

- ``HybridSearchView`` is Oscar's own search view whose ``form_valid`` asks ``search()`` instead
  of haystack. ``HybridResults`` is what Oscar's templates and ``FacetMunger`` read from a
  haystack result set (items with ``.object``, length, slices, ``facet_counts()``), built from
  the ranked products; facet values and prices come from Oscar's own ``ProductIndex``, so
  they are what Oscar's haystack index would hold.
- ``ImageSearchView`` (``/search/image/``) searches by an uploaded picture, in Oscar's layout.
- Both log their searches in clip_search's search log as the REST API does (the order the
  shopper saw, the facets and sort chosen); the page's context names the row: ``search_id``.
- ``HybridProductListView`` runs the dashboard's title box through hybrid search over the
  products the staff member may see (quarantined ones included, as in the admin), and lists
  what the words match, best first: it stays a filter.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace
from typing import Any

from django import forms
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.views.generic import FormView
from oscar.core.loading import get_class

from clip_search import searchlog
from clip_search.imaging import ImageRejected
from clip_search.registry import registry
from clip_search.search import search

logger = logging.getLogger(__name__)

LABEL = "catalogue.product"


class ResultItem:
    """One hit as Oscar's templates read a haystack result: ``result.object``."""

    def __init__(self, product: models.Model) -> None:
        self.object = product
        self.pk = product.pk


class HybridResults:
    """Ranked products, shaped like the haystack result set Oscar's search page reads."""

    # BaseSearchView asks the backend whether it can spell-check (we do not: no suggestion).
    query = SimpleNamespace(backend=SimpleNamespace(include_spelling=False))
    search_id = None  # the search log's row, when logged

    def __init__(self, products: list[models.Model], facets: dict[str, Any]) -> None:
        self.items = [ResultItem(product) for product in products]
        self.facets = facets

    def __len__(self) -> int:
        return len(self.items)

    def count(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def facet_counts(self) -> dict[str, Any]:
        return self.facets


def _index():
    """Oscar's own haystack ProductIndex: its ``prepare_*`` say what Oscar facets on."""
    return get_class("search.search_indexes", "ProductIndex")()


def facet_values(product: models.Model, index) -> dict[str, Any]:
    return {"product_class": index.prepare_product_class(product),
            "rating": index.prepare_rating(product), "price": index.prepare_price(product)}


def _in_range(price: Any, query: str) -> bool:
    """A haystack range query as Oscar writes them: ``[20 TO 40]``, ``[60 TO *]``."""
    if price is None:
        return False
    low, _, high = query.strip("[]").partition(" TO ")
    try:
        return Decimal(low) <= price and (high.strip() == "*" or price <= Decimal(high))
    except InvalidOperation:
        return False


def narrow(products: list, values: dict[int, dict], selected: dict[str, list[str]]) -> list:
    """Keep the products every selected facet allows (``selected_facets=product_class:Book``)."""
    def allowed(product) -> bool:
        value = values[product.pk]
        for field, wanted in selected.items():
            if field == "price":
                if not any(_in_range(value["price"], query) for query in wanted):
                    return False
            elif str(value.get(field)) not in wanted:
                return False
        return True

    return [product for product in products if allowed(product)]


def count_facets(products: list, values: dict[int, dict], settings_facets: dict) -> dict[str, Any]:
    """``facet_counts()`` as haystack returns it, counted over the (narrowed) hits."""
    fields = {}
    for key, facet in settings_facets["fields"].items():
        counts = Counter(values[p.pk].get(facet["field"]) for p in products)
        fields[key] = sorted(((str(v), n) for v, n in counts.items() if v is not None), key=lambda i: -i[1])
    queries = {}
    for facet in settings_facets["queries"].values():
        for _name, query in facet["queries"]:
            field = facet["field"]
            queries[f"{field}:{query}"] = sum(_in_range(values[p.pk].get(field), query) for p in products)
    return {"fields": fields, "queries": queries, "dates": {}}


SORTS = {
    "newest": (lambda p, v: p.date_created, True),
    "price-desc": (lambda p, v: v["price"] is not None and v["price"] or Decimal(-1), True),
    "price-asc": (lambda p, v: v["price"] if v["price"] is not None else Decimal("Infinity"), False),
    "title-asc": (lambda p, v: p.get_title().lower(), False),
    "title-desc": (lambda p, v: p.get_title().lower(), True),
}


def hybrid_results(query: str, selected: dict[str, list[str]], sort_by: str | None,
                   request: Any = None) -> HybridResults:
    """Oscar's storefront set (the registration's queryset) searched, narrowed, sorted, counted;
    the search logged (``search_id``) when the query has words and the log is on."""
    from django.conf import settings

    started = time.perf_counter()
    registration = registry.get(LABEL)
    results = search(registration.get_queryset(), text=query) if query.strip() else None
    products = list(results) if results is not None else []
    index = _index()
    values = {product.pk: facet_values(product, index) for product in products}
    narrowed = narrow(products, values, selected)
    if sort_by in SORTS:
        key, reverse = SORTS[sort_by]
        narrowed.sort(key=lambda product: key(product, values[product.pk]), reverse=reverse)
    hybrid = HybridResults(narrowed, count_facets(narrowed, values, settings.OSCAR_SEARCH_FACETS))
    if results is not None:
        filters = {**selected, **({"sort": [sort_by]} if sort_by else {})}
        hybrid.search_id = searchlog.record_later(results, request, filters=filters,
                                                  shown=[p.pk for p in narrowed], started=started)
    return hybrid


class HybridSearchView(get_class("search.views", "FacetedSearchView")):
    """Oscar's search page (its template, form, sorting, facets, pagination) on hybrid search."""

    def form_valid(self, form):
        query = form.cleaned_data.get(self.search_field) or ""
        selected, sort_by = dict(form.selected_multi_facets), form.cleaned_data.get("sort_by")
        self.queryset = hybrid_results(query, selected, sort_by, self.request)
        context = self.get_context_data(**{self.form_name: form, "query": query,
                                           "object_list": self.queryset,
                                           "search_id": getattr(self.queryset, "search_id", None)})
        return self.render_to_response(context)


class HybridProductListView(get_class("dashboard.catalogue.views", "ProductListView")):
    """The dashboard's product list: its title search runs hybrid search (SKUs, words, colours),
    best first; its other filters and Oscar's permission rules apply as they do."""

    def apply_search(self, queryset: models.QuerySet) -> models.QuerySet:
        self.form = self.form_class(self.request.GET)
        title = self.form.cleaned_data.get("title", "").strip() if self.form.is_valid() else ""
        if not title:
            return super().apply_search(queryset)  # the UPC search and the rest, as Oscar does
        cached = getattr(self, "_clip_search", None)  # Oscar calls this twice per request
        if cached is None or cached[0] != title:
            # A filter, as Oscar's title box was: staff select all and act on what it lists, so it
            # lists what the words match (full text, SKU, brand, typos included), best first,
            # not the nearest pictures of anything.
            results = search(queryset, text=title, include_quarantined=True)
            words = models.Q(fulltext_rank__isnull=False) | models.Q(keyword_rank__isnull=False)
            matched = results.filter(words)
            cached = self._clip_search = (title, matched)
        return cached[1]

    def get_table(self, **kwargs):
        if getattr(self, "_clip_search", None):
            kwargs.setdefault("order_by", ())  # keep the fused order; a column click still sorts
        return super().get_table(**kwargs)


class PictureForm(forms.Form):
    # A FileField: clip_search's own decoder judges the bytes and says why a file is refused.
    image = forms.FileField(label=_("Picture"), widget=forms.ClearableFileInput(attrs={"accept": "image/*"}))
    q = forms.CharField(label=_("With words"), required=False, max_length=200)


class ImageSearchView(FormView):
    """Search the storefront by an uploaded picture (optionally with words), in Oscar's layout
    and product cards; a refused file is a form error, a missing encoder a message."""

    template_name = "clip_search/oscar/image_search.html"
    form_class = PictureForm
    limit = 24

    def form_valid(self, form: PictureForm):
        registration = registry.get(LABEL)
        started = time.perf_counter()
        try:
            results = search(registration.get_queryset(), image=form.cleaned_data["image"],
                             text=form.cleaned_data["q"] or None, limit=self.limit)
            products = list(results)
        except ImageRejected as error:
            form.add_error("image", error.message)
            return self.form_invalid(form)
        except Exception:  # the image encoder cannot be loaded: say so, never a 500
            logger.exception("clip_search: image search failed")
            form.add_error(None, _("Search by picture is unavailable right now; please search by words."))
            return self.form_invalid(form)
        search_id = searchlog.record_later(results, self.request, kind=searchlog.SearchRecord.Kind.IMAGE,
                                           started=started)
        return self.render_to_response(self.get_context_data(form=form, products=products, searched=True,
                                                             search_id=search_id))
