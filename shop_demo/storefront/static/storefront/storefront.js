// The demo storefront: every search goes through the clip_search REST API (/api/v1/...).
// Plain JS, no build step. One "current search" (words, a picture, or "more like" a product)
// is re-run whenever a filter changes; "Show more" follows the API's `next` link.
"use strict";

(function () {
  const root = document.getElementById("storefront");
  const strings = JSON.parse(document.getElementById("storefront-strings").textContent);
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const urls = {
    search: root.dataset.searchUrl,
    image: root.dataset.imageUrl,
    similar: (pk) => root.dataset.similarUrl.replace("__pk__", encodeURIComponent(pk)),
  };
  const el = (id) => document.getElementById(id);
  const form = el("search-form"), input = el("q"), filters = el("filters");
  const grid = el("grid"), status = el("status"), notice = el("notice"), error = el("error");
  const empty = el("empty"), more = el("more"), dropzone = el("dropzone");
  const imageInput = el("image-input"), preview = el("image-preview");
  const template = el("card-template");
  const price = new Intl.NumberFormat(document.documentElement.lang || undefined,
    {style: "currency", currency: "EUR"});

  let current = null;  // {kind: "text", q} | {kind: "image", file, q} | {kind: "similar", pk, title}
  let nextUrl = null;
  let generation = 0;  // a newer search makes older responses stale

  const format = (text, values) => text.replace(/\{(\w+)\}/g, (_, key) => values[key] ?? "");

  function filterParams() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(filters)) {
      if (String(value).trim() !== "") params.set(name, value);
    }
    return params;
  }

  function firstUrl(search) {
    const params = filterParams();
    if (search.kind === "text") params.set("q", search.q);
    const base = search.kind === "text" ? urls.search
      : search.kind === "image" ? urls.image : urls.similar(search.pk);
    const query = params.toString();
    return query ? `${base}?${query}` : base;
  }

  function request(search, url) {
    if (search.kind !== "image") {
      return fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
    }
    const body = new FormData();
    body.append("image", search.file);
    if (search.q) body.append("q", search.q);
    return fetch(url, {
      method: "POST", body, credentials: "same-origin",
      headers: {Accept: "application/json", "X-CSRFToken": csrfToken},
    });
  }

  async function run(search, {append = false} = {}) {
    current = search;
    const mine = ++generation;
    const url = append ? nextUrl : firstUrl(search);
    setBusy(true);
    hide(error);
    let response, data;
    try {
      response = await request(search, url);
      data = await response.json().catch(() => null);
    } catch (failure) {
      if (mine === generation) showError(strings.networkError);
      return;
    } finally {
      if (mine === generation) setBusy(false);
    }
    if (mine !== generation) return;
    if (!response.ok) {
      showError(data && data.error ? data.error.message
        : format(strings.serverError, {status: response.status}));
      return;
    }
    render(search, data, append);
  }

  function render(search, data, append) {
    if (!append) grid.replaceChildren();
    for (const product of data.results) grid.append(card(product));
    nextUrl = data.next;
    more.hidden = !nextUrl;
    empty.hidden = data.count > 0;
    grid.hidden = data.count === 0;
    const degraded = Object.values(data.degraded || {});
    notice.hidden = degraded.length === 0;
    notice.textContent = degraded.length ? strings.degraded : "";
    notice.title = degraded.join("\n");
    status.textContent = summary(search, data);
  }

  function summary(search, data) {
    const values = {count: data.count, query: search.q, title: search.title};
    if (search.kind === "similar") return format(strings.resultsLike, values);
    if (search.kind === "image") {
      return format(search.q ? strings.resultsForImageAndText : strings.resultsForImage, values);
    }
    return format(strings.resultsForText, {...values, query: data.query || search.q});
  }

  function card(product) {
    const node = template.content.firstElementChild.cloneNode(true);
    const img = node.querySelector("img");
    if (product.image) img.src = product.image; else img.remove();
    node.dataset.pk = product.id;
    node.dataset.sku = product.sku;
    node.dataset.category = product.category;
    node.querySelector(".title").textContent = product.title;
    node.querySelector(".brand-name").textContent = product.brand;
    node.querySelector(".sku").textContent = product.sku;
    node.querySelector(".price").textContent = price.format(Number(product.price));
    const stock = node.querySelector(".stock");
    stock.textContent = product.in_stock ? strings.inStock : strings.outOfStock;
    stock.classList.toggle("out", !product.in_stock);
    node.querySelector(".like").addEventListener("click", () => {
      showPreview(null);
      run({kind: "similar", pk: product.id, title: product.title});
      window.scrollTo({top: 0, behavior: "smooth"});
    });
    return node;
  }

  function setBusy(busy) {
    root.classList.toggle("busy", busy);
    root.setAttribute("aria-busy", String(busy));
    if (busy && !grid.children.length) status.textContent = strings.searching;
  }

  function showError(message) {
    error.textContent = message;
    error.hidden = false;
    status.textContent = "";
    notice.hidden = true;
    grid.replaceChildren();
    empty.hidden = true;
    more.hidden = true;
  }

  function hide(node) {
    node.hidden = true;
  }

  function showPreview(file) {
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
    showPreview(file);
    run({kind: "image", file, q: input.value.trim()});
  }

  let typing = null;
  function searchByText() {
    clearTimeout(typing);
    const q = input.value.trim();
    if (!q) return;
    showPreview(null);
    run({kind: "text", q});
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchByText();
  });
  input.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(searchByText, 400);
  });
  filters.addEventListener("change", () => current && run(current));
  filters.addEventListener("submit", (event) => event.preventDefault());
  more.addEventListener("click", () => current && nextUrl && run(current, {append: true}));

  imageInput.addEventListener("change", () => searchByImage(imageInput.files[0]));
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
})();
