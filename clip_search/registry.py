"""Which shop models are searchable, and how to read an image and text from each.

Like django-watson's registry: the shop calls ``clip_search.register(Product, ...)`` from its
own AppConfig.ready (or a ``clip.py`` module it imports there). Nothing is added to the shop's
table; the registry only describes how to read a product.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models

ImageSource = str | Callable[[models.Model], bytes | None]


class RegistrationError(ImproperlyConfigured):
    """A register() call names a field that does not exist, or registers a model twice."""


# Full-text weights PostgreSQL knows, given to text fields in the order they are listed.
TEXT_WEIGHTS = ("A", "B", "C", "D")


def resolve_path(model: type[models.Model], path: str) -> models.Field:
    """The field at the end of ``brand__name``, or RegistrationError naming the missing part."""
    current = model
    parts = path.split("__")
    for i, part in enumerate(parts):
        try:
            field_ = current._meta.get_field(part)
        except FieldDoesNotExist:
            raise RegistrationError(
                f"clip_search.register({model._meta.label}): field {path!r} does not exist "
                f"({part!r} is not a field of {current._meta.label})."
            ) from None
        if i < len(parts) - 1:
            if not field_.is_relation or field_.many_to_many or field_.one_to_many:
                raise RegistrationError(
                    f"clip_search.register({model._meta.label}): {path!r} follows {part!r}, "
                    "which is not a foreign key or one-to-one field."
                )
            current = field_.related_model
    return field_


def read_path(obj: models.Model, path: str) -> Any:
    value: Any = obj
    for part in path.split("__"):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


@dataclass(frozen=True)
class Registration:
    """How clip_search reads one shop model. Built by register(); read by tasks and search."""

    model: type[models.Model]
    image: ImageSource
    text: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    queryset: Callable[[], models.QuerySet] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.model._meta.label_lower

    def validate(self) -> None:
        """Raise RegistrationError for the first field path that does not exist."""
        if isinstance(self.image, str):
            image_field = resolve_path(self.model, self.image)
            if not isinstance(image_field, models.FileField):
                raise RegistrationError(
                    f"clip_search.register({self.model._meta.label}): image={self.image!r} must be "
                    "an ImageField/FileField or a callable returning bytes."
                )
        elif not callable(self.image):
            raise RegistrationError(
                f"clip_search.register({self.model._meta.label}): image must be a field name or "
                "a callable returning bytes."
            )
        if len(self.text) > len(TEXT_WEIGHTS):
            raise RegistrationError(
                f"clip_search.register({self.model._meta.label}): at most {len(TEXT_WEIGHTS)} "
                "text fields (PostgreSQL has four full-text weights); join the rest in a callable."
            )
        for path in (*self.text, *self.keywords):
            resolve_path(self.model, path)

    def get_queryset(self) -> models.QuerySet:
        """What the storefront may show; the shop's own rule, e.g. ``is_public=True``."""
        if self.queryset is not None:
            return self.queryset()
        return self.model._default_manager.all()

    def read_image(self, obj: models.Model) -> bytes | None:
        """The product's image bytes via its storage, or None when it has no image."""
        if callable(self.image):
            return self.image(obj)
        file = read_path(obj, self.image)
        if not file:
            return None
        with file.open("rb") as handle:
            return handle.read()

    def image_name(self, obj: models.Model) -> str:
        """A cheap marker of the image (its storage name) used to notice a changed image."""
        if callable(self.image):
            return ""
        file = read_path(obj, self.image)
        return file.name if file else ""

    def text_parts(self, obj: models.Model) -> list[tuple[str, str]]:
        """(weight, text) pairs for the stored full-text document, heaviest first."""
        return [
            (weight, _as_text(read_path(obj, path)))
            for weight, path in zip(TEXT_WEIGHTS, self.text, strict=False)
        ]

    def keyword_values(self, obj: models.Model) -> list[str]:
        """SKU, brand, model numbers: matched exactly and by trigram, not stemmed."""
        return [v for v in (_as_text(read_path(obj, p)) for p in self.keywords) if v]

    def keyword_text(self, obj: models.Model) -> str:
        return " ".join(self.keyword_values(obj))

    def related_paths(self) -> list[str]:
        """select_related() paths that the text and keyword fields follow."""
        paths = {p.rsplit("__", 1)[0] for p in (*self.text, *self.keywords) if "__" in p}
        return sorted(paths)


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


class Registry:
    def __init__(self) -> None:
        self._registrations: dict[str, Registration] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        # Errors from string-named registrations resolved in ready(): reported by checks.py.
        self.errors: list[RegistrationError] = []

    def register(
        self,
        model: type[models.Model] | str,
        *,
        image: ImageSource,
        text: Sequence[str] = (),
        keywords: Sequence[str] = (),
        queryset: Callable[[], models.QuerySet] | None = None,
        **extra: Any,
    ) -> Registration | None:
        """Make ``model`` searchable. ``model`` may be a class or an "app_label.Model" string.

        A string is resolved once the app registry is ready, so a shop can register a
        third-party model from its own settings-time code without importing it early.
        """
        options = dict(image=image, text=tuple(text), keywords=tuple(keywords),
                       queryset=queryset, extra=extra)
        if isinstance(model, str) and not apps.models_ready:
            self._pending.append((model, options))
            return None
        if isinstance(model, str):
            model = apps.get_model(model)
        registration = Registration(model=model, **options)
        if registration.label in self._registrations:
            raise RegistrationError(f"{model._meta.label} is already registered with clip_search.")
        registration.validate()
        if hasattr(model, EMBEDDING_ATTRIBUTE):
            raise RegistrationError(
                f"{model._meta.label} already has an attribute {EMBEDDING_ATTRIBUTE!r}."
            )
        setattr(model, EMBEDDING_ATTRIBUTE, EmbeddingDescriptor())
        self._registrations[registration.label] = registration
        from clip_search.signals import connect_registration

        connect_registration(registration)
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

    def unregister(self, model: type[models.Model]) -> None:
        registration = self._registrations.pop(model._meta.label_lower, None)
        if registration is None:
            raise RegistrationError(f"{model._meta.label} is not registered with clip_search.")
        delattr(model, EMBEDDING_ATTRIBUTE)
        from clip_search.signals import disconnect_registration

        disconnect_registration(registration)

    def get(self, model: type[models.Model] | str) -> Registration:
        label = model if isinstance(model, str) else model._meta.label_lower
        try:
            return self._registrations[label.lower()]
        except KeyError:
            raise RegistrationError(f"{label} is not registered with clip_search.") from None

    def is_registered(self, model: type[models.Model]) -> bool:
        return model._meta.label_lower in self._registrations

    def __iter__(self) -> Iterable[Registration]:
        return iter(list(self._registrations.values()))

    def __len__(self) -> int:
        return len(self._registrations)


registry = Registry()
register = registry.register
unregister = registry.unregister
