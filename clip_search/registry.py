"""Which shop models are searchable, and how to read their images and text.

Like django-watson's registry: the shop calls ``clip_search.register(Product, ...)`` from its
own AppConfig.ready (or a ``clip.py`` module it imports there). Nothing is added to the shop's
table; the registry only describes how to read a product. It imports nothing that acts on a
registration: ``clip_search.apps`` subscribes the signal wiring with ``registry.subscribe``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ObjectDoesNotExist
from django.db import models
from django.db.models.fields.files import FieldFile

RelatedSpec = str | Callable[[models.Model], Iterable[Any]]
# A text or keyword source: a field path ("brand__name"), or a callable returning a string or
# several (attribute values, a product's partner SKUs).
TextSource = str | Callable[[models.Model], Any]


class RegistrationError(ImproperlyConfigured):
    """A register() call names a field that does not exist, or registers a model twice."""


# Full-text weights PostgreSQL knows, given to text fields in the order they are listed.
TEXT_WEIGHTS = ("A", "B", "C", "D")


class SourceImage:
    """One image of a product as clip_search reads it: a stored file, or bytes from a callable.

    ``identity`` is what a change is noticed by without reading the file: the storage name
    (a re-upload gets a new name from Django's storages), or for bytes their sha256.
    """

    def __init__(self, *, file: FieldFile | None = None, data: bytes | None = None, name: str = "") -> None:
        self.file, self.data = file, data
        self.name = name or (file.name if file is not None else "")

    @classmethod
    def of(cls, value: ImageValue) -> SourceImage | None:
        """Wrap what a field or a callable gave; None for an empty field or None."""
        if value is None or isinstance(value, SourceImage):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(data=bytes(value))
        if isinstance(value, FieldFile):
            return cls(file=value) if value else None
        raise TypeError(f"an image must be a FieldFile, bytes or None, not {type(value).__name__}")

    @property
    def identity(self) -> str:
        if self.name:
            return self.name
        return "sha256:" + hashlib.sha256(self.data or b"").hexdigest()

    def read(self) -> bytes:
        """The bytes, through the file's storage (OSError when the file is gone)."""
        if self.data is not None:
            return self.data
        with self.file.open("rb") as handle:
            return handle.read()

    def size(self) -> int | None:
        """Bytes as the storage reports them (a stat, or a HEAD on object storage)."""
        if self.data is not None:
            return len(self.data)
        return self.file.storage.size(self.file.name)

    @property
    def url(self) -> str | None:
        if self.file is None:
            return None
        try:
            return self.file.url
        except ValueError:  # a FieldFile without a name
            return None

    def __repr__(self) -> str:
        return f"SourceImage({self.identity!r})"


ImageValue = FieldFile | bytes | SourceImage | None
ImagesCallable = Callable[[models.Model], Iterable[ImageValue]]


@dataclass(frozen=True)
class ImagePath:
    """``image`` / ``gallery__image`` / ``images__original``: forward relations, at most one
    reverse foreign key (several images, in the related model's default ordering), then a
    file field."""

    path: str
    parts: tuple[str, ...]
    many_at: int | None  # index of the reverse relation in ``parts``, if any
    file_model: type[models.Model]  # the model holding the file field

    @property
    def relation_prefix(self) -> str:
        """The lookup from the registered model to ``file_model`` ("" when it is the model)."""
        return "__".join(self.parts[:-1])

    def values(self, obj: models.Model) -> list[Any]:
        """The file fields at the end of the path (the prefetch cache when ``fetch`` filled it)."""
        return list(_follow(obj, list(self.parts)))


def resolve_path(model: type[models.Model], path: str, *, allow_many: bool = False
                 ) -> tuple[models.Field, type[models.Model], int | None]:
    """The field at the end of ``brand__name``, the model holding it, and where a reverse
    relation was followed; RegistrationError naming the missing or unusable part."""
    current, many_at = model, None
    parts = path.split("__")
    for i, part in enumerate(parts):
        try:
            field_ = current._meta.get_field(part)
        except FieldDoesNotExist:
            raise RegistrationError(
                f"clip_search.register({model._meta.label}): field {path!r} does not exist "
                f"({part!r} is not a field of {current._meta.label})."
            ) from None
        if i == len(parts) - 1:
            return field_, current, many_at
        if not field_.is_relation or field_.many_to_many:
            raise RegistrationError(
                f"clip_search.register({model._meta.label}): {path!r} follows {part!r}, "
                "which is not a foreign key or one-to-one field.")
        if field_.one_to_many:
            if not allow_many or many_at is not None:
                raise RegistrationError(
                    f"clip_search.register({model._meta.label}): {path!r} follows {part!r}, a "
                    "reverse foreign key; only images= may follow one (a callable can do more).")
            many_at = i
        current = field_.related_model
    raise RegistrationError(f"clip_search.register({model._meta.label}): empty field path.")


def read_path(obj: models.Model, path: str) -> Any:
    value: Any = obj
    for part in path.split("__"):
        value = _attribute(value, part)
        if value is None:
            return None
    return value


def _attribute(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except ObjectDoesNotExist:  # a one-to-one whose other side does not exist
        return None


@dataclass(frozen=True)
class Watcher:
    """A related model whose rows feed a registered model: ``affected(row)`` gives the pks of
    the registered objects a change to ``row`` can alter. ``images`` marks a model holding
    image files (a new upload there hides its products until scored)."""

    model: type[models.Model]
    affected: Callable[[models.Model], list[Any]]
    images: bool = False
    fields: frozenset[str] = frozenset()  # the fields read, for update_fields; empty: any


@dataclass(frozen=True)
class Registration:
    """How clip_search reads one shop model. Built by register(); read by tasks and search."""

    model: type[models.Model]
    images: tuple[ImagePath, ...] | ImagesCallable
    text: tuple[TextSource, ...] = ()
    keywords: tuple[TextSource, ...] = ()
    queryset: Callable[[], models.QuerySet] | None = None
    related: dict[type[models.Model], RelatedSpec] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    single_image: bool = False  # registered with image=: at most one image
    # What search-as-you-type offers, by kind: {"title": "title", "brand": "brand__name"}.
    suggest: dict[str, TextSource] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.model._meta.label_lower

    @property
    def image(self) -> str | ImagesCallable:
        """The ``image=`` path (``"image"``, ``"brand__logo"``), or the images callable; for
        code that needs one file field per object (thumbnails in lists)."""
        if callable(self.images):
            return self.images
        return self.images[0].path

    def get_queryset(self) -> models.QuerySet:
        """What the storefront may show; the shop's own rule, e.g. ``is_public=True``."""
        if self.queryset is not None:
            return self.queryset()
        return self.model._default_manager.all()

    # ----------------------------------------------------------------- reading an object

    def source_images(self, obj: models.Model) -> list[SourceImage]:
        """The object's images in display order (empty fields and None left out)."""
        if callable(self.images):
            values: Iterable[ImageValue] = self.images(obj)
            if values is None or isinstance(values, (bytes, FieldFile, SourceImage)):
                values = [values]  # an image= callable returns one image, not a list
        else:
            values = [value for path in self.images for value in path.values(obj)]
        images = [image for image in map(SourceImage.of, values) if image is not None]
        return images[:1] if self.single_image else images

    def read_image(self, obj: models.Model) -> bytes | None:
        """The first image's bytes, or None (what ``clip_train`` pairs with the text)."""
        images = self.source_images(obj)
        return images[0].read() if images else None

    def image_url(self, obj: models.Model) -> str | None:
        """The URL to show the object's picture at (admin thumbnails, the API's ``image``):
        ``register(..., image_url=callable)`` when given (images a callable gives as bytes have
        no URL of their own), else the first image's file URL, else None."""
        if "image_url" in self.extra:
            return self.extra["image_url"](obj)
        for image in self.source_images(obj):
            return image.url
        return None

    def text_parts(self, obj: models.Model) -> list[tuple[str, str]]:
        """(weight, text) pairs for the stored full-text document, heaviest first."""
        return [(weight, " ".join(_texts(obj, source)))
                for weight, source in zip(TEXT_WEIGHTS, self.text, strict=False)]

    def keyword_values(self, obj: models.Model) -> list[str]:
        """SKU, brand, model numbers: matched exactly and by trigram, not stemmed."""
        return [value for source in self.keywords for value in _texts(obj, source)]

    def keyword_text(self, obj: models.Model) -> str:
        return " ".join(self.keyword_values(obj))

    def suggestion_values(self, obj: models.Model) -> dict[str, list[str]]:
        """The phrases search-as-you-type offers for ``obj``, by kind (``suggest=``)."""
        return {kind: values for kind, source in self.suggest.items() if (values := _texts(obj, source))}

    def source_digest(self, obj: models.Model, images: Sequence[SourceImage] | None = None) -> str:
        """sha256 over what the index is built from: searchable text, keywords and the images'
        identities in display order. Cheap: no file is read (unless a callable gives bytes)."""
        images = self.source_images(obj) if images is None else images
        parts = [*(text for _, text in self.text_parts(obj)), self.keyword_text(obj),
                 *(image.identity for image in images)]
        # A suggestion source the text and keywords do not already hold changes the row too.
        parts += [" ".join(_texts(obj, source)) for source in self._own_suggest_sources()]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def fetch(self, pks: Iterable[Any]) -> list[models.Model]:
        """The objects for ``pks`` with what reading them needs, in few queries (all objects of
        the model, not only the storefront's)."""
        manager = self.model._default_manager
        return list(manager.select_related(*self.related_paths()).prefetch_related(*self.prefetch_paths())
                    .filter(pk__in=list(pks)))

    def related_paths(self) -> list[str]:
        """select_related() paths that the text, keyword and single image fields follow."""
        paths = {p.rsplit("__", 1)[0] for p in self.paths() if "__" in p}
        if not callable(self.images):
            paths |= {"__".join(path.parts[:path.many_at if path.many_at is not None else -1])
                      for path in self.images}
        return sorted(p for p in paths if p)

    def prefetch_paths(self) -> list[str]:
        """prefetch_related() paths for images behind a reverse foreign key."""
        if callable(self.images):
            return list(self.extra.get("prefetch", ()))
        return sorted({"__".join(path.parts[:path.many_at + 1]) for path in self.images
                       if path.many_at is not None})

    def read_roots(self) -> set[str] | None:
        """The model's own fields whose change can alter the index (None: unknown, a callable)."""
        if callable(self.images) or any(not isinstance(source, str) for source in
                                        (*self.text, *self.keywords, *self._own_suggest_sources())):
            return None
        paths = (*(path.path for path in self.images), *self.paths())
        return {path.split("__")[0] for path in paths}

    def paths(self) -> list[str]:
        """The text, keyword and suggestion sources that are field paths (not callables)."""
        sources = (*self.text, *self.keywords, *self._own_suggest_sources())
        return [source for source in sources if isinstance(source, str)]

    def _own_suggest_sources(self) -> list[TextSource]:
        return [source for source in self.suggest.values() if source not in (*self.text, *self.keywords)]

    # ----------------------------------------------------------------- related models

    def watchers(self) -> list[Watcher]:
        """The related models to watch: those the image, text and keyword paths go through
        (found from the paths), then ``related=`` (which wins for a model it names)."""
        found: dict[type[models.Model], Watcher] = {}
        if not callable(self.images):
            for path in self.images:
                if path.relation_prefix:
                    found[path.file_model] = Watcher(path.file_model, self._by_lookup(path.relation_prefix),
                                                     images=True, fields=frozenset({path.parts[-1]}))
        for path in self.paths():
            prefix, _, name = path.rpartition("__")
            if prefix:
                _field, related_model, _many = resolve_path(self.model, path)
                if related_model not in found:
                    found[related_model] = Watcher(related_model, self._by_lookup(prefix),
                                                   fields=frozenset({name}))
                elif not found[related_model].images:
                    watcher = found[related_model]
                    found[related_model] = Watcher(related_model, watcher.affected,
                                                   fields=watcher.fields | {name})
        for related_model, spec in self.related.items():
            images = related_model in found and found[related_model].images or callable(self.images)
            found[related_model] = Watcher(related_model, self._by_spec(spec), images=images)
        return list(found.values())

    def _by_lookup(self, lookup: str) -> Callable[[models.Model], list[Any]]:
        """Registered objects reaching ``row`` through ``lookup`` (``brand``, ``gallery``)."""
        def affected(row: models.Model) -> list[Any]:
            manager = self.model._default_manager
            return list(manager.filter(**{lookup: row}).values_list("pk", flat=True).distinct())

        return affected

    def _by_spec(self, spec: RelatedSpec) -> Callable[[models.Model], list[Any]]:
        """``related=`` values: a path from the related row to the registered objects
        (``"product"``, ``"product__parent"``, ``"products"``) or a callable returning them."""
        def affected(row: models.Model) -> list[Any]:
            values = spec(row) if callable(spec) else _follow(row, spec.split("__"))
            return list(dict.fromkeys(v.pk if isinstance(v, models.Model) else v for v in values
                                      if v is not None))

        return affected


def _follow(obj: Any, parts: list[str]) -> Iterator[Any]:
    """Every object at the end of ``parts``, through foreign keys and reverse managers."""
    if not parts:
        yield obj
        return
    value = _attribute(obj, parts[0])
    if value is None:
        return
    for item in (value.all() if isinstance(value, models.Manager) else [value]):
        yield from _follow(item, parts[1:])


EMBEDDING_ATTRIBUTE = "clip_embedding"


class EmbeddingDescriptor:
    """``product.clip_embedding``: the product's row for the active encoder, or None.

    A plain attribute, not a field: the shop's table and migrations are untouched.
    """

    def __get__(self, obj: models.Model | None, owner: type) -> Any:
        if obj is None:
            return self
        from clip_search.models import Embedding

        return Embedding.objects.for_object(obj).active().first()


def _as_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _texts(obj: models.Model, source: TextSource) -> list[str]:
    """The non-empty strings a text or keyword source gives for ``obj``."""
    value = source(obj) if callable(source) else read_path(obj, source)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [text for text in map(_as_text, value) if text]
    text = _as_text(value)
    return [text] if text else []


def _model(value: type[models.Model] | str) -> type[models.Model]:
    return apps.get_model(value) if isinstance(value, str) else value


class Registry:
    def __init__(self) -> None:
        self._registrations: dict[str, Registration] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._subscribers: list[tuple[Callable[[Registration], None], Callable[[Registration], None]]] = []
        # Errors from string-named registrations resolved in ready(): reported by checks.py.
        self.errors: list[RegistrationError] = []

    def register(
        self,
        model: type[models.Model] | str,
        *,
        image: str | Callable[[models.Model], ImageValue] | None = None,
        images: str | Sequence[str] | ImagesCallable | None = None,
        text: Sequence[TextSource] = (),
        keywords: Sequence[TextSource] = (),
        queryset: Callable[[], models.QuerySet] | None = None,
        related: dict[type[models.Model] | str, RelatedSpec] | None = None,
        suggest: dict[str, TextSource] | None = None,
        **extra: Any,
    ) -> Registration | None:
        """Make ``model`` searchable. ``model`` may be a class or an "app_label.Model" string.

        ``image=`` names one file field (or a callable returning bytes or a file); ``images=``
        one or more paths (``"gallery__image"`` follows a reverse foreign key: every image, in
        the related model's ordering) or a callable returning the images in display order.
        ``related=`` maps another model to the registered objects its rows affect: a path from
        its rows (``"product"``) or a callable. ``suggest=`` names what search-as-you-type offers,
        by kind (``{"title": "title", "brand": "brand__name"}``; the first text source as
        ``"title"`` by default). ``image_url=`` (a callable) gives the URL to show
        an object's picture at, where its images have none (bytes from a callable). String
        models are resolved once the app registry is ready, so a shop can register a
        third-party model before importing it.
        """
        options = dict(image=image, images=images, text=tuple(text), keywords=tuple(keywords),
                       queryset=queryset, related=dict(related or {}), suggest=suggest, extra=extra)
        names = [model, *(related or {})]
        if any(isinstance(name, str) for name in names) and not apps.models_ready:
            self._pending.append((model, options))
            return None
        model = _model(model)
        registration = build_registration(model, **options)
        if registration.label in self._registrations:
            raise RegistrationError(f"{model._meta.label} is already registered with clip_search.")
        if hasattr(model, EMBEDDING_ATTRIBUTE):
            raise RegistrationError(
                f"{model._meta.label} already has an attribute {EMBEDDING_ATTRIBUTE!r}."
            )
        setattr(model, EMBEDDING_ATTRIBUTE, EmbeddingDescriptor())
        self._registrations[registration.label] = registration
        for on_register, _on_unregister in self._subscribers:
            on_register(registration)
        return registration

    def resolve_pending(self) -> None:
        """Register the string-named models once apps are ready (called by AppConfig.ready)."""
        pending, self._pending = self._pending, []
        for label, options in pending:
            extra = options.pop("extra")
            try:
                self.register(label, **options, **extra)
            except (RegistrationError, LookupError) as error:
                self.errors.append(RegistrationError(f"clip_search.register({label!r}): {error}"))

    def subscribe(self, on_register: Callable[[Registration], None],
                  on_unregister: Callable[[Registration], None]) -> None:
        """Call ``on_register`` for every registration, past and future (the signal wiring)."""
        self._subscribers.append((on_register, on_unregister))
        for registration in self:
            on_register(registration)

    def unregister(self, model: type[models.Model]) -> None:
        registration = self._registrations.pop(model._meta.label_lower, None)
        if registration is None:
            raise RegistrationError(f"{model._meta.label} is not registered with clip_search.")
        delattr(model, EMBEDDING_ATTRIBUTE)
        for _on_register, on_unregister in self._subscribers:
            on_unregister(registration)

    def get(self, model: type[models.Model] | str) -> Registration:
        label = model if isinstance(model, str) else model._meta.label_lower
        try:
            return self._registrations[label.lower()]
        except KeyError:
            raise RegistrationError(f"{label} is not registered with clip_search.") from None

    def is_registered(self, model: type[models.Model]) -> bool:
        return model._meta.label_lower in self._registrations

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._registrations.values()))

    def __len__(self) -> int:
        return len(self._registrations)


def build_registration(model: type[models.Model], *, image: Any, images: Any, text: tuple[TextSource, ...],
                       keywords: tuple[TextSource, ...], queryset: Any, related: dict,
                       extra: dict, suggest: dict[str, TextSource] | None = None) -> Registration:
    """Validate register()'s arguments into a Registration; RegistrationError names the problem."""
    where = f"clip_search.register({model._meta.label})"
    if (image is None) == (images is None):
        raise RegistrationError(f"{where}: give image= (one image) or images= (several), not both.")
    if len(text) > len(TEXT_WEIGHTS):
        raise RegistrationError(f"{where}: at most {len(TEXT_WEIGHTS)} text fields (PostgreSQL has four "
                                "full-text weights); join the rest in a callable.")
    if suggest is None:
        suggest = {"title": text[0]} if text else {}
    if not isinstance(suggest, dict) or not all(isinstance(kind, str) and kind for kind in suggest):
        raise RegistrationError(f"{where}: suggest= must map kinds (\"title\", \"brand\") to sources.")
    for source in (*text, *keywords, *suggest.values()):
        if isinstance(source, str):
            resolve_path(model, source)
        elif not callable(source):
            raise RegistrationError(f"{where}: a text, keyword or suggestion source must be a field path or "
                                    f"a callable, not {source!r}.")
    spec = image if image is not None else images
    paths = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else []
    if callable(spec):
        resolved: tuple[ImagePath, ...] | ImagesCallable = spec
    elif paths and all(isinstance(path, str) for path in paths):
        many = images is not None
        resolved = tuple(_image_path(model, path, allow_many=many, where=where) for path in paths)
    else:
        raise RegistrationError(f"{where}: {'image' if image is not None else 'images'} must be a file "
                                "field path, a list of them (images=), or a callable.")
    try:
        related_models = {_model(name): spec for name, spec in related.items()}
    except LookupError as error:
        raise RegistrationError(f"{where}: related= {error}") from None
    for related_model, spec in related_models.items():
        if not callable(spec) and not isinstance(spec, str):
            raise RegistrationError(
                f"{where}: related[{related_model._meta.label}] must be a path or a callable.")
        if isinstance(spec, str):
            _check_related_path(related_model, spec, model, where)
    return Registration(model=model, images=resolved, text=text, keywords=keywords, queryset=queryset,
                        related=related_models, extra=extra, single_image=image is not None,
                        suggest=dict(suggest))


def _image_path(model: type[models.Model], path: str, *, allow_many: bool, where: str) -> ImagePath:
    field_, holder, many_at = resolve_path(model, path, allow_many=allow_many)
    if not isinstance(field_, models.FileField):
        raise RegistrationError(f"{where}: image path {path!r} must end at an ImageField/FileField.")
    return ImagePath(path=path, parts=tuple(path.split("__")), many_at=many_at, file_model=holder)


def _check_related_path(related_model: type[models.Model], path: str, target: type[models.Model],
                        where: str) -> None:
    current = related_model
    for part in path.split("__"):
        try:
            field_ = current._meta.get_field(part)
        except FieldDoesNotExist:
            raise RegistrationError(f"{where}: related path {path!r} from {related_model._meta.label}: "
                                    f"{part!r} is not a field of {current._meta.label}.") from None
        if not field_.is_relation:
            raise RegistrationError(f"{where}: related path {path!r} from {related_model._meta.label} "
                                    f"must follow relations; {part!r} is not one.")
        current = field_.related_model
    if not issubclass(current, target) and not issubclass(target, current):
        raise RegistrationError(f"{where}: related path {path!r} from {related_model._meta.label} "
                                f"leads to {current._meta.label}, not {target._meta.label}.")


registry = Registry()
register = registry.register
unregister = registry.unregister
