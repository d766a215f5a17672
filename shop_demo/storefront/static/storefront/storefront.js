// The demo storefront: every search goes through the REST API (/api/v1/...). Plain JS, no build step.
//
// The URL is the search: /?q=red+mug&category=mug&sort=price&page=2 (or ?like=<id> for "more like
// this", ?picture=<id> for a picture chosen on this page). Every change of search goes through
// go(), which writes the URL (a new history entry, or the same one while the shopper is only
// typing) and then show()s it; Back, Forward and a deep link show() the URL they land on. So
// whatever is on screen can be shared, and comes back as it was.
//
// What the shopper does with a result (opens it, adds it to the cart) is reported to the shop's
// search log (POST /api/v1/events/) with the search's id and the result's position, by a beacon
// that outlives the page. A search the log did not keep (search_id null) reports nothing.
"use strict";

(function () {
  const el = (id) => document.getElementById(id);
  const root = el("storefront");
  const strings = JSON.parse(el("storefront-strings").textContent);
  const config = JSON.parse(el("storefront-config").textContent);
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const urls = {
    search: root.dataset.searchUrl,
    image: root.dataset.imageUrl,
    suggest: root.dataset.suggestUrl,
    similar: (pk) => root.dataset.similarUrl.replace("__pk__", encodeURIComponent(pk)),
    events: root.dataset.eventsUrl,
  };
  const form = el("search-form"), input = el("q"), listbox = el("suggestions");
  const filters = el("filters"), facetsBox = el("facets"), filtersToggle = el("filters-toggle");
  const minPrice = el("min-price"), maxPrice = el("max-price");
  const sortField = el("sort-field"), sortSelect = el("sort");
  const status = el("status"), loading = el("loading"), spelling = el("spelling"), notes = el("notes");
  const error = el("error"), home = el("home"), popular = el("popular"), grid = el("grid");
  const chips = el("chips"), chipList = el("chip-list"), clearAll = el("clear-all");
  const empty = el("empty"), pager = el("pager");
  const dropzone = el("dropzone"), imageInput = el("image-input"), preview = el("image-preview");
  const template = el("card-template");
  const dialog = el("product-dialog"), dialogAdd = el("dialog-add"), cartCount = el("cart-count");
  const price = new Intl.NumberFormat(document.documentElement.lang || undefined,
    {style: "currency", currency: "EUR"});

  const FACETS = config.facets;          // the query parameters that select facet values
  const PAGE_SIZE = config.pageSize;
  const FACET_VALUES_SHOWN = 8;          // a longer facet folds the rest behind "Show all"
  const SUGGEST_DELAY = 150, TYPING_DELAY = 400;  // ms after the last keystroke

  const format = (text, values) => text.replace(/\{(\w+)\}/g, (_, key) => values[key] ?? "");

  // ------------------------------------------------------------------ the search, as in the URL

  // {q, correct, like, likeTitle, picture, facets: {name: [value, ...]}, minPrice, maxPrice, sort, page}
  function stateFrom(location, entry) {
    const params = new URLSearchParams(location.search);
    const facets = {};
    for (const name of FACETS) {
      const values = params.getAll(name).filter((value) => value !== "");
      if (values.length) facets[name] = [...new Set(values)];
    }
    const page = parseInt(params.get("page"), 10);
    return {
      q: (params.get("q") || "").trim(),
      correct: params.get("correct") !== "false",
      like: params.get("like") || "",
      likeTitle: (entry && entry.likeTitle) || "",
      picture: params.get("picture") || "",
      facets,
      minPrice: params.get("min_price") || "",
      maxPrice: params.get("max_price") || "",
      sort: params.get("sort") || "",
      page: page > 1 ? page : 1,
    };
  }

  // The parameters every request of this search shares: the page's URL and the API's.
  function filterParams(state) {
    const params = new URLSearchParams();
    for (const name of FACETS) {
      for (const value of state.facets[name] || []) params.append(name, value);
    }
    if (state.minPrice) params.set("min_price", state.minPrice);
    if (state.maxPrice) params.set("max_price", state.maxPrice);
    if (state.sort && state.sort !== "relevance") params.set("sort", state.sort);
    return params;
  }

  function pageUrl(state) {
    const params = new URLSearchParams();
    if (state.like) params.set("like", state.like);
    if (state.picture) params.set("picture", state.picture);
    if (state.q) params.set("q", state.q);
    if (state.q && !state.correct) params.set("correct", "false");
    for (const [name, value] of filterParams(state)) params.append(name, value);
    if (state.page > 1) params.set("page", state.page);
    const query = params.toString();
    return query ? `${location.pathname}?${query}` : location.pathname;
  }

  function apiUrl(state) {
    const params = filterParams(state);
    let base = urls.search;
    if (state.like) base = urls.similar(state.like);
    else if (state.picture) base = urls.image;  // the words go in the POST's body
    else {
      params.set("q", state.q);
      if (!state.correct) params.set("correct", "false");
    }
    params.set("highlight", "1");
    params.set("limit", PAGE_SIZE);
    if (state.page > 1) params.set("offset", (state.page - 1) * PAGE_SIZE);
    return `${base}?${params}`;
  }

  const isHome = (state) => !state.q && !state.like && !state.picture;
  const activeFilters = (state) => Object.values(state.facets).reduce((sum, values) => sum + values.length, 0)
    + (state.minPrice ? 1 : 0) + (state.maxPrice ? 1 : 0);

  // A new search from the box starts from its own facets (the old ones counted other hits) but
  // keeps what the shopper set for themselves: their price range and order.
  function textSearch(q) {
    return {...blank(), q, minPrice: current.minPrice, maxPrice: current.maxPrice, sort: current.sort};
  }

  function blank() {
    return {q: "", correct: true, like: "", likeTitle: "", picture: "", facets: {},
      minPrice: "", maxPrice: "", sort: "", page: 1};
  }

  let current = blank();

  // push: a new history entry (the same URL only replaces its entry); typing: one entry for a
  // run of keystrokes (the first pushes, the next ones replace it); replace: this entry.
  function go(state, {mode = "push"} = {}) {
    const url = pageUrl(state);
    const entry = {typing: mode === "typing", likeTitle: state.likeTitle || ""};
    const here = location.pathname + location.search;
    const typingEntry = Boolean(history.state && history.state.typing);
    if (url !== here && (mode === "push" || (mode === "typing" && !typingEntry))) {
      history.pushState(entry, "", url);
    } else {
      history.replaceState(entry, "", url);
    }
    show(state);
  }

  window.addEventListener("popstate", (event) => {
    closeSuggestions();
    clearTimeout(typingTimer);
    show(stateFrom(location, event.state));
  });

  // ------------------------------------------------------------------ showing a search

  const pictures = new Map();  // picture id → File, for this page's life (a file has no URL)
  let generation = 0;          // a newer search makes older responses stale
  let inFlight = null;         // its AbortController

  function show(state) {
    current = state;
    if (dialog.open) dialog.close();  // Back while a product's panel is open: the panel goes too
    syncControls(state);
    renderChips(state);
    document.title = state.q ? format(strings.pageTitleQuery, {query: state.q}) : strings.pageTitle;
    if (isHome(state)) {
      showHome();
    } else if (state.picture && !pictures.has(state.picture)) {
      showHome(strings.pictureAgain);  // a reload or a shared link: the picture stayed behind
    } else {
      search(state);
    }
  }

  function syncControls(state) {
    if (input.value.trim() !== state.q) input.value = state.q;
    minPrice.value = state.minPrice;
    maxPrice.value = state.maxPrice;
    if (sortSelect.options.length) sortSelect.value = state.sort || "relevance";
    showPreview(state.picture ? pictures.get(state.picture) : null);
    const count = activeFilters(state);
    filtersToggle.textContent = count ? format(strings.filtersActive, {count}) : strings.filters;
  }

  async function search(state) {
    const mine = ++generation;
    if (inFlight) inFlight.abort();
    inFlight = new AbortController();
    setBusy(true);
    let response, data;
    try {
      response = await request(state, inFlight.signal);
      data = await response.json().catch(() => null);
    } catch (failure) {
      if (mine === generation) {
        setBusy(false);
        showError(strings.networkError);
      }
      return;
    }
    if (mine !== generation) return;
    setBusy(false);
    if (!response.ok || !data) {
      showError(errorMessage(response.status, data));
    } else if (!data.results.length && data.count > 0 && state.page > 1) {
      go({...state, page: pageCount(data.count)}, {mode: "replace"});  // past the last page
    } else {
      render(state, data);
    }
  }

  function request(state, signal) {
    const url = apiUrl(state);
    const headers = {Accept: "application/json"};
    if (!state.picture) return fetch(url, {headers, credentials: "same-origin", signal});
    const body = new FormData();
    body.append("image", pictures.get(state.picture));
    if (state.q) body.append("q", state.q);
    return fetch(url, {
      method: "POST", body, credentials: "same-origin", signal,
      headers: {...headers, "X-CSRFToken": csrfToken},
    });
  }

  // Every search shows it is under way, the first as much as the tenth.
  function setBusy(busy) {
    root.classList.toggle("busy", busy);
    root.setAttribute("aria-busy", String(busy));
    loading.hidden = !busy;
    if (busy) {
      status.textContent = strings.searching;
      error.hidden = true;
      atHome(false);
    }
  }

  function render(state, data) {
    atHome(false);
    error.hidden = true;
    // Every card keeps the search that showed it and where: its position among all the results.
    const shown = {searchId: data.search_id || null, offset: (state.page - 1) * PAGE_SIZE};
    grid.replaceChildren(...data.results.map((product, index) => card(product, shown, index)));
    grid.hidden = data.count === 0;
    status.textContent = summary(state, data);
    renderSpelling(state, data);
    renderNotes(data);
    renderFacets(state, data.facets || []);
    renderSorts(data.sorts || [], data.sort, data.count);
    renderChips(state);
    renderPager(state, data.count);
    renderEmpty(state, data);
  }

  function summary(state, data) {
    const values = {count: data.count, query: state.q, title: state.likeTitle};
    if (state.like) return format(state.likeTitle ? strings.resultsLike : strings.resultsLikeProduct, values);
    if (state.picture) {
      return format(state.q ? strings.resultsForImageAndText : strings.resultsForImage, values);
    }
    return format(strings.resultsForText, {...values, query: data.did_you_mean || data.query || state.q});
  }

  // "Showing results for umbrella. Search instead for umbrela" (the link searches the words as typed).
  function renderSpelling(state, data) {
    spelling.hidden = !data.did_you_mean;
    if (!data.did_you_mean) return spelling.replaceChildren();
    const corrected = document.createElement("strong");
    corrected.textContent = data.did_you_mean;
    const asTyped = {...state, correct: false, page: 1};
    const original = link(pageUrl(asTyped), state.q, () => go(asTyped));
    original.id = "search-instead";
    spelling.replaceChildren(...formatNodes(strings.didYouMean, {corrected, original}));
  }

  function renderNotes(data) {
    const lines = [];
    if (data.truncated) lines.push(strings.truncated);
    if (data.relaxed) lines.push(strings.relaxed);
    if (data.capped) lines.push(strings.capped);
    if (Object.keys(data.degraded || {}).length) lines.push(strings.degraded);
    notes.replaceChildren(...lines.map((line) => textElement("li", line)));
    notes.hidden = !lines.length;
  }

  function card(product, shown, index) {
    const node = template.content.firstElementChild.cloneNode(true);
    const img = node.querySelector("img");
    if (product.image) img.src = product.image; else img.remove();
    const result = {searchId: shown.searchId, position: shown.offset + index + 1};
    node.dataset.pk = product.id;
    node.dataset.sku = product.sku;
    node.dataset.category = product.category;
    node.dataset.position = result.position;
    const title = node.querySelector(".title");
    const marked = product.highlight && product.highlight.title;
    if (marked) appendMarked(title, marked); else title.textContent = product.title;
    node.querySelector(".brand-name").textContent = product.brand;
    node.querySelector(".sku").textContent = product.sku;
    node.querySelector(".price").textContent = price.format(Number(product.price));
    const stock = node.querySelector(".stock");
    stock.textContent = product.in_stock ? strings.inStock : strings.outOfStock;
    stock.classList.toggle("out", !product.in_stock);
    const open = () => openProduct(product, result);
    node.querySelector(".title").addEventListener("click", open);
    node.querySelector(".thumb").addEventListener("click", open);
    node.querySelector(".add-to-cart").addEventListener("click", (event) => {
      addToCart(product, result, event.currentTarget);
    });
    node.querySelector(".like").addEventListener("click", () => {
      go({...blank(), like: String(product.id), likeTitle: product.title});
      window.scrollTo({top: 0, behavior: "smooth"});
    });
    return node;
  }

  // The API's highlight is escaped HTML whose only tags are <mark>. It is parsed in an inert
  // <template> and rebuilt from its text and marks alone: nothing else in it becomes markup.
  function appendMarked(node, html) {
    const parsed = document.createElement("template");
    parsed.innerHTML = html;
    for (const child of parsed.content.childNodes) {
      node.append(child.nodeName === "MARK" ? textElement("mark", child.textContent) : child.textContent);
    }
  }

  // ------------------------------------------------------------------ a product's panel, the cart, events

  let dialogProduct = null;  // {product, result} of the open panel

  // The demo has no product pages: the panel shows what the card shows, larger.
  function openProduct(product, result) {
    dialogProduct = {product, result};
    const image = el("dialog-image");
    image.hidden = !product.image;
    if (product.image) image.src = product.image; else image.removeAttribute("src");
    el("dialog-title").textContent = product.title;
    el("dialog-brand").textContent = product.brand;
    el("dialog-category").textContent = product.category;
    el("dialog-sku").textContent = product.sku;
    el("dialog-price").textContent = price.format(Number(product.price));
    const stock = el("dialog-stock");
    stock.textContent = product.in_stock ? strings.inStock : strings.outOfStock;
    stock.classList.toggle("out", !product.in_stock);
    dialogAdd.textContent = strings.addToCart;
    if (!dialog.open) dialog.showModal();
    sendEvent("click", product, result);
  }

  dialogAdd.addEventListener("click", () => {
    if (dialogProduct) addToCart(dialogProduct.product, dialogProduct.result, dialogAdd);
  });
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();  // a click on the backdrop
  });

  let cart = 0;
  function addToCart(product, result, button) {
    cart += 1;
    cartCount.textContent = String(cart);
    button.textContent = strings.added;
    setTimeout(() => { button.textContent = strings.addToCart; }, 1500);
    sendEvent("add_to_cart", product, result);
  }

  // A beacon is queued by the browser and sent even if the page is left right after; its JSON
  // goes as text/plain (no CORS preflight), which the API reads. fetch with keepalive where a
  // beacon cannot be queued (no support, or the browser's beacon quota is full).
  function sendEvent(kind, product, result) {
    if (!result.searchId) return;  // the shop keeps no search log
    const body = JSON.stringify({search_id: result.searchId, kind, product_id: String(product.id),
      position: result.position});
    let queued = false;
    try {
      queued = Boolean(navigator.sendBeacon) && navigator.sendBeacon(urls.events, body);
    } catch (failure) {
      queued = false;
    }
    if (!queued) {
      fetch(urls.events, {method: "POST", body, keepalive: true, credentials: "same-origin",
        headers: {"Content-Type": "text/plain;charset=UTF-8"}}).catch(() => {});
    }
  }

  // ------------------------------------------------------------------ facets, chips, sort, pages

  const titles = new Map();  // facet name → title, as the API last gave it
  const labels = new Map();  // "name=value" → label
  const unfolded = new Set();  // facets the shopper asked to see in full
  const labelOf = (name, value) => labels.get(`${name}=${value}`) || value;

  function renderFacets(state, facets) {
    const groups = facets.map((facet) => facetGroup(state, facet)).filter(Boolean);
    facetsBox.replaceChildren(...groups);
  }

  function facetGroup(state, facet) {
    titles.set(facet.name, facet.title);
    for (const value of facet.values) labels.set(`${facet.name}=${value.value}`, value.label);
    const selected = state.facets[facet.name] || [];
    const values = [...facet.values];
    for (const value of selected) {  // a choice no hit has any more still shows, to be unticked
      if (!values.some((shown) => shown.value === value)) {
        values.push({value, label: labelOf(facet.name, value), count: 0});
      }
    }
    if (!values.length) return null;
    const group = document.createElement("fieldset");
    group.className = "facet";
    group.dataset.facet = facet.name;
    group.append(textElement("legend", facet.title));
    const list = document.createElement("ul");
    const folded = values.length > FACET_VALUES_SHOWN && !unfolded.has(facet.name);
    values.forEach((value, index) => {
      const checked = selected.includes(value.value);
      const item = facetValue(facet.name, value, checked);
      item.hidden = folded && index >= FACET_VALUES_SHOWN && !checked;
      list.append(item);
    });
    group.append(list);
    if (values.length > FACET_VALUES_SHOWN) {
      const toggle = textElement("button", folded
        ? format(strings.showAllValues, {count: values.length}) : strings.showFewerValues);
      toggle.type = "button";
      toggle.className = "link fold";
      toggle.addEventListener("click", () => {
        if (folded) unfolded.add(facet.name); else unfolded.delete(facet.name);
        group.replaceWith(facetGroup(current, facet));
      });
      group.append(toggle);
    }
    return group;
  }

  function facetValue(name, value, checked) {
    const item = document.createElement("li");
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    Object.assign(box, {type: "checkbox", name, value: value.value, checked});
    label.append(box, textElement("span", value.label, "value-label"),
      textElement("span", String(value.count), "count"));
    item.append(label);
    return item;
  }

  function toggleFacet(name, value, on) {
    const values = (current.facets[name] || []).filter((chosen) => chosen !== value);
    if (on) values.push(value);
    const facets = {...current.facets, [name]: values};
    if (!values.length) delete facets[name];
    go({...current, facets, page: 1});
  }

  function renderChips(state) {
    const items = [];
    for (const name of FACETS) {
      for (const value of state.facets[name] || []) {
        const text = format(strings.chip, {facet: titles.get(name) || name, value: labelOf(name, value)});
        items.push(chip(text, () => toggleFacet(name, value, false)));
      }
    }
    if (state.minPrice) {
      items.push(chip(format(strings.minPriceChip, {price: price.format(Number(state.minPrice))}),
        () => go({...current, minPrice: "", page: 1})));
    }
    if (state.maxPrice) {
      items.push(chip(format(strings.maxPriceChip, {price: price.format(Number(state.maxPrice))}),
        () => go({...current, maxPrice: "", page: 1})));
    }
    chipList.replaceChildren(...items);
    chips.hidden = !items.length || isHome(state);
  }

  function chip(text, remove) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chip";
    button.setAttribute("aria-label", format(strings.removeFilter, {filter: text}));
    button.append(textElement("span", text), textElement("span", "×", "remove"));
    button.addEventListener("click", () => {
      remove();
      status.focus();
    });
    item.append(button);
    return item;
  }

  function clearFilters() {
    go({...current, facets: {}, minPrice: "", maxPrice: "", page: 1});
    status.focus();
  }

  function renderSorts(sorts, selected, count) {
    sortSelect.replaceChildren(...sorts.map((sort) => {
      const option = textElement("option", sort.label);
      option.value = sort.value;
      return option;
    }));
    sortSelect.value = selected || "relevance";
    sortField.hidden = sorts.length < 2 || !count;
  }

  const pageCount = (count) => Math.max(1, Math.ceil(count / PAGE_SIZE));

  function renderPager(state, count) {
    const pages = pageCount(count);
    pager.hidden = pages < 2;
    pagerLink(el("previous"), state, state.page > 1 ? state.page - 1 : null);
    pagerLink(el("next"), state, state.page < pages ? state.page + 1 : null);
    el("page-of").textContent = format(strings.pageOf, {page: state.page, pages});
  }

  function pagerLink(anchor, state, page) {
    if (page === null) {
      anchor.removeAttribute("href");
      anchor.setAttribute("aria-disabled", "true");
    } else {
      anchor.href = pageUrl({...state, page});
      anchor.removeAttribute("aria-disabled");
    }
    anchor.onclick = (event) => {
      event.preventDefault();
      if (page === null) return;
      go({...current, page});
      status.scrollIntoView({block: "start", behavior: "smooth"});
    };
  }

  // ------------------------------------------------------------------ home, no results, errors

  function showHome(message) {
    generation++;  // whatever was under way is no longer wanted
    if (inFlight) inFlight.abort();
    setBusy(false);
    for (const node of [grid, empty, pager, spelling, notes, error, chips, sortField]) node.hidden = true;
    grid.replaceChildren();
    facetsBox.replaceChildren();
    status.textContent = message || "";
    atHome(true);
    popularSuggestions().then((list) => suggestionChips(popular, strings.popular, list));
  }

  // Before any search there is nothing to filter: the welcome and its suggestions only.
  function atHome(yes) {
    home.hidden = !yes;
    root.classList.toggle("at-home", yes);
  }

  let popularList = null;
  async function popularSuggestions() {
    if (popularList) return popularList;
    const list = await fetchSuggestions("").catch(() => []);
    if (list.length) popularList = list;
    return list;
  }

  async function renderEmpty(state, data) {
    empty.hidden = data.count > 0;
    if (data.count > 0) return;
    el("empty-title").textContent = state.q && !state.picture
      ? format(strings.noResults, {query: state.q}) : strings.noResultsAtAll;
    const unknown = (data.unknown_words || []).map((word) => `“${word}”`).join(", ");
    const words = el("empty-words");
    words.hidden = !unknown;
    words.textContent = unknown ? format(strings.unknownWords, {words: unknown}) : "";
    const emptyFilters = el("empty-filters");
    emptyFilters.hidden = !activeFilters(state);
    if (activeFilters(state)) {
      const button = textElement("button", strings.clearFilters, "link");
      button.type = "button";
      button.addEventListener("click", clearFilters);
      emptyFilters.replaceChildren(strings.noResultsFilters, " ", button);
    }
    const box = el("empty-suggestions");
    const mine = generation;
    let list = state.q ? await fetchSuggestions(state.q).catch(() => []) : [];
    if (!list.length) list = await popularSuggestions();
    if (mine === generation) suggestionChips(box, strings.trySuggestions, list.slice(0, 6));
  }

  function suggestionChips(box, heading, list) {
    box.hidden = !list.length;
    const buttons = list.map((suggestion) => {
      const button = textElement("button", suggestion.text, "suggestion-chip");
      button.type = "button";
      button.addEventListener("click", () => runSuggestion(suggestion.text));
      return button;
    });
    box.replaceChildren(textElement("span", heading, "suggestion-heading"), ...buttons);
  }

  // The API's own messages are for developers; the shopper reads ours, chosen by the error's code.
  const ERROR_STRINGS = {
    throttled: "throttled", unavailable: "unavailable", image_search_unavailable: "imageSearchUnavailable",
    not_an_image: "notAnImage", format: "notAnImage", empty: "brokenImage", broken: "brokenImage",
    too_large: "imageTooLarge", too_many_pixels: "imageTooLarge", not_indexed: "notIndexed",
    not_found: "notFound", invalid: "invalid", bad_request: "invalid", parse_error: "invalid",
  };
  const STATUS_STRINGS = {400: "invalid", 404: "notFound", 413: "imageTooLarge", 415: "notAnImage",
    429: "throttled", 503: "unavailable"};

  function errorMessage(statusCode, data) {
    const code = data && data.error && data.error.code;
    const key = ERROR_STRINGS[code] || STATUS_STRINGS[statusCode];
    return key ? strings[key] : format(strings.serverError, {status: statusCode});
  }

  function showError(message) {
    error.textContent = message;
    error.hidden = false;
    status.textContent = "";
    for (const node of [notes, spelling, empty, pager, home]) node.hidden = true;
    grid.replaceChildren();
  }

  // ------------------------------------------------------------------ the search box and its suggestions

  let typingTimer = null, suggestTimer = null, suggestGeneration = 0;
  let options = [], active = -1;

  async function fetchSuggestions(q) {
    const params = new URLSearchParams({q, limit: "8"});
    const response = await fetch(`${urls.suggest}?${params}`, {
      headers: {Accept: "application/json"}, credentials: "same-origin"});
    if (!response.ok) return [];
    return (await response.json()).suggestions || [];
  }

  async function updateSuggestions() {
    const q = input.value.trim();
    const mine = ++suggestGeneration;
    if (!q) return closeSuggestions();
    const list = await fetchSuggestions(q).catch(() => []);
    if (mine !== suggestGeneration || document.activeElement !== input) return;
    options = list;
    active = -1;
    listbox.replaceChildren(...list.map(suggestionOption));
    setExpanded(list.length > 0);
  }

  function suggestionOption(suggestion, index) {
    const option = document.createElement("li");
    option.id = `suggestion-${index}`;
    option.setAttribute("role", "option");
    option.setAttribute("aria-selected", "false");
    option.className = "suggestion";
    option.append(textElement("span", suggestion.text, "suggestion-text"));
    const kind = strings.suggestionKinds[suggestion.kind];
    if (kind) option.append(textElement("span", kind, "suggestion-kind"));
    option.addEventListener("mousedown", (event) => event.preventDefault());  // keep the input's focus
    option.addEventListener("click", () => runSuggestion(suggestion.text));
    return option;
  }

  function setExpanded(open) {
    listbox.hidden = !open;
    input.setAttribute("aria-expanded", String(open));
    if (!open) {
      active = -1;
      input.removeAttribute("aria-activedescendant");
    }
  }

  function closeSuggestions() {
    clearTimeout(suggestTimer);
    suggestGeneration++;
    setExpanded(false);
  }

  function moveActive(step) {
    if (!options.length) return;
    if (listbox.hidden) setExpanded(true);
    const positions = options.length + 1;  // the options, and -1: back in the input itself
    active = (active + 1 + step + positions) % positions - 1;
    listbox.querySelectorAll("[role=option]").forEach((option, index) => {
      option.setAttribute("aria-selected", String(index === active));
      if (index === active) option.scrollIntoView({block: "nearest"});
    });
    if (active >= 0) input.setAttribute("aria-activedescendant", `suggestion-${active}`);
    else input.removeAttribute("aria-activedescendant");
  }

  function runSuggestion(text) {
    input.value = text;
    submitText();
  }

  function submitText() {
    clearTimeout(typingTimer);
    closeSuggestions();
    const q = input.value.trim();
    go(q ? textSearch(q) : blank());
  }

  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      moveActive(event.key === "ArrowDown" ? 1 : -1);
    } else if (event.key === "Enter" && !listbox.hidden && active >= 0) {
      event.preventDefault();
      runSuggestion(options[active].text);
    } else if (event.key === "Escape" && !listbox.hidden) {
      event.preventDefault();
      closeSuggestions();
    }
  });
  input.addEventListener("input", () => {
    clearTimeout(suggestTimer);
    clearTimeout(typingTimer);
    suggestTimer = setTimeout(updateSuggestions, SUGGEST_DELAY);
    typingTimer = setTimeout(searchWhileTyping, TYPING_DELAY);
  });
  input.addEventListener("blur", closeSuggestions);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitText();
  });

  function searchWhileTyping() {
    const q = input.value.trim();
    if (!q || (q === current.q && !current.picture && !current.like)) return;
    go(textSearch(q), {mode: "typing"});
  }

  // ------------------------------------------------------------------ filters and sort

  filters.addEventListener("change", (event) => {
    const target = event.target;
    if (target.type === "checkbox") {
      toggleFacet(target.name, target.value, target.checked);
    } else if (target === minPrice || target === maxPrice) {
      go({...current, minPrice: minPrice.value.trim(), maxPrice: maxPrice.value.trim(), page: 1});
    }
  });
  filters.addEventListener("submit", (event) => event.preventDefault());
  sortSelect.addEventListener("change", () => go({...current, sort: sortSelect.value, page: 1}));
  clearAll.addEventListener("click", clearFilters);
  filtersToggle.addEventListener("click", () => {
    const open = filtersToggle.getAttribute("aria-expanded") !== "true";
    filtersToggle.setAttribute("aria-expanded", String(open));
    filters.classList.toggle("open", open);
  });

  // ------------------------------------------------------------------ search by picture

  let previewFile = null;
  function showPreview(file) {
    if (file === previewFile) return;
    previewFile = file || null;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file); else preview.removeAttribute("src");
  }

  function searchByImage(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError(strings.notAnImage);
      return;
    }
    const id = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
    pictures.set(id, file);
    go({...blank(), picture: id, q: input.value.trim(), minPrice: current.minPrice,
      maxPrice: current.maxPrice, sort: current.sort});
  }

  imageInput.addEventListener("change", () => {
    searchByImage(imageInput.files[0]);
    imageInput.value = "";  // choosing the same file again searches again
  });
  dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") imageInput.click();
  });
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    searchByImage(event.dataTransfer.files[0]);
  });

  // ------------------------------------------------------------------ small DOM helpers

  function textElement(tag, text, className) {
    const node = document.createElement(tag);
    node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function link(href, text, follow) {
    const anchor = textElement("a", text);
    anchor.href = href;
    anchor.addEventListener("click", (event) => {
      event.preventDefault();
      follow();
    });
    return anchor;
  }

  // A translated sentence with nodes in its {placeholders}: "Showing results for {corrected}. ..."
  function formatNodes(text, nodes) {
    return text.split(/\{(\w+)\}/).map((part, index) => (index % 2 ? nodes[part] ?? "" : part));
  }

  show(stateFrom(location, history.state));
})();
