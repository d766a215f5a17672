"""The shop's synonym sets: edited one line at a time in the file's own syntax, and imported or
exported as a whole file (Solr's ``synonyms.txt``, see clip_search.synonyms)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext_lazy as _

from clip_search import synonyms
from clip_search.models import Synonym

MAX_FILE_BYTES = 2 * 1024 * 1024


class SynonymForm(forms.ModelForm):
    """One set as one line: ``crimson, scarlet, red`` or ``rucksack => backpack``."""

    line = forms.CharField(
        label=_("Synonyms"), max_length=2000, widget=forms.TextInput(attrs={"size": 80}),
        help_text=_("Words or phrases separated by commas: any of them finds all "
                    "(\"crimson, scarlet, red\"). Or one-way, with =>: \"rucksack, knapsack => backpack\" "
                    "finds backpacks for \"rucksack\", not rucksacks for \"backpack\"."))

    class Meta:
        model = Synonym
        fields = ["line", "enabled", "note"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["line"] = synonyms.format_line(self.instance)

    def clean_line(self) -> synonyms.SynonymLine:
        try:
            return synonyms.parse_line(self.cleaned_data["line"])
        except synonyms.SynonymFileError as error:
            raise forms.ValidationError(str(error)) from error

    def save(self, commit: bool = True) -> Synonym:
        line = self.cleaned_data["line"]
        self.instance.terms, self.instance.synonyms = list(line.terms), list(line.synonyms)
        return super().save(commit)


class ImportForm(forms.Form):
    file = forms.FileField(label=_("Synonyms file"), help_text=_(
        "UTF-8 text, one set per line, # for comments (Solr's synonyms.txt)."))
    replace = forms.BooleanField(label=_("Replace every existing set"), required=False)

    def clean_file(self) -> str:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_FILE_BYTES:
            raise forms.ValidationError(_("The file is larger than 2 MB."))
        try:
            text = upload.read().decode("utf-8-sig")
            synonyms.parse_file(text)
        except UnicodeDecodeError:
            raise forms.ValidationError(_("The file is not UTF-8 text.")) from None
        except synonyms.SynonymFileError as error:
            raise forms.ValidationError(str(error)) from error
        return text


@admin.register(Synonym)
class SynonymAdmin(admin.ModelAdmin):
    form = SynonymForm
    list_display = ("__str__", "direction", "enabled", "note", "updated_at")
    list_filter = ("enabled",)
    list_editable = ("enabled",)
    search_fields = ("terms", "synonyms", "note")
    change_list_template = "admin/clip_search/synonym/change_list.html"

    @admin.display(description=_("kind"))
    def direction(self, synonym: Synonym) -> str:
        return str(_("one-way") if synonym.synonyms else _("multi-way"))

    def get_urls(self) -> list:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name=f"{name}_import"),
            path("export/", self.admin_site.admin_view(self.export_view), name=f"{name}_export"),
            *super().get_urls(),
        ]

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Add a file's sets (or replace every set: needs the delete permission too)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            replace = form.cleaned_data["replace"]
            if replace and not self.has_delete_permission(request):
                raise PermissionDenied
            added = synonyms.import_file(form.cleaned_data["file"], replace=replace)
            self.message_user(request, _("%(count)d synonym sets imported.") % {"count": added},
                              messages.SUCCESS)
            changelist = f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"
            return HttpResponseRedirect(reverse(changelist, current_app=self.admin_site.name))
        context = {**self.admin_site.each_context(request), "opts": self.opts, "form": form,
                   "title": _("Import synonyms")}
        return TemplateResponse(request, "admin/clip_search/synonym/import.html", context)

    def export_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        response = HttpResponse(synonyms.export_file(), content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="synonyms.txt"'
        return response
