"""Synonym sets: the file format, the admin (one line each, import and export) and the command.
What they do to search is in test_search_trust.py."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from clip_search import synonyms
from clip_search.models import Synonym
from clip_search.query import keyword_query, parse, with_synonyms

FILE = """# colours
crimson, Scarlet , red
rucksack, knapsack => backpack
rain  umbrella, brolly
"""


def test_the_file_format_reads_multi_way_and_one_way_sets():
    lines = synonyms.parse_file(FILE)
    assert lines == [synonyms.SynonymLine(("crimson", "scarlet", "red")),
                     synonyms.SynonymLine(("rucksack", "knapsack"), ("backpack",)),
                     synonyms.SynonymLine(("rain umbrella", "brolly"))]
    mapping = synonyms.mapping(lines)
    assert mapping["scarlet"] == ("crimson", "red") and mapping["knapsack"] == ("backpack",)
    assert "backpack" not in mapping  # one-way
    assert [synonyms.format_line(line) for line in lines] == [
        "crimson, scarlet, red", "rucksack, knapsack => backpack", "rain umbrella, brolly"]


@pytest.mark.parametrize("text, message", [
    ("red", "line 1: a set needs two words"), ("a => b => c", "more than one"),
    ("\n=> backpack", "line 2: '=>' needs words on both sides"), ("a, " + "x" * 101, "longer than 100"),
])
def test_a_bad_line_is_named(text, message):
    with pytest.raises(synonyms.SynonymFileError, match=message):
        synonyms.parse_file(text)


def test_synonyms_expand_the_full_text_terms_and_the_keyword_values():
    mapping = synonyms.mapping(synonyms.parse_file(FILE))
    expanded = with_synonyms(parse("crimson knapsack -red"), mapping)
    assert [term.forms for term in expanded.terms] == [
        ("crimson", "scarlet", "red"), ("knapsack", "backpack"), ("red",)]  # a negated word: itself only
    assert keyword_query("rain umbrella", mapping).boosted == ["rain umbrella", "brolly"]


@pytest.mark.django_db
def test_import_export_round_trip_and_replace():
    assert synonyms.import_file(FILE) == 3
    assert synonyms.import_file(FILE) == 0  # nothing twice
    exported = synonyms.export_file()
    assert set(synonyms.parse_file(exported)) == set(synonyms.parse_file(FILE))
    assert synonyms.import_file("tee, t-shirt\n", replace=True) == 1
    assert [s.terms for s in Synonym.objects.all()] == [["tee", "t-shirt"]]
    with pytest.raises(synonyms.SynonymFileError):
        synonyms.import_file("good, line\nbad\n", replace=True)
    assert Synonym.objects.count() == 1  # a bad file changes nothing


@pytest.mark.django_db
def test_the_command_imports_and_exports(tmp_path, capsys):
    source = tmp_path / "synonyms.txt"
    source.write_text(FILE, encoding="utf-8")
    call_command("clip_synonyms", "--import", str(source))
    target = tmp_path / "out.txt"
    call_command("clip_synonyms", "--export", str(target))
    assert set(synonyms.parse_file(target.read_text(encoding="utf-8"))) == set(synonyms.parse_file(FILE))
    source.write_text("oops\n", encoding="utf-8")
    with pytest.raises(CommandError, match="line 1"):
        call_command("clip_synonyms", "--import", str(source))


def staff(*codenames: str) -> User:
    user = User.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="clip_search",
                                                        codename__in=codenames))
    return user


@pytest.mark.django_db
def test_staff_edit_a_set_as_one_line(client):
    client.force_login(staff("add_synonym", "change_synonym", "view_synonym"))
    response = client.post(reverse("admin:clip_search_synonym_add"),
                           {"line": "Rucksack => backpack", "enabled": "on", "note": ""})
    assert response.status_code == 302, response.content
    synonym = Synonym.objects.get()
    assert (synonym.terms, synonym.synonyms) == (["rucksack"], ["backpack"])
    change = client.get(reverse("admin:clip_search_synonym_change", args=[synonym.pk]))
    assert b'value="rucksack =&gt; backpack"' in change.content
    bad = client.post(reverse("admin:clip_search_synonym_add"), {"line": "alone", "enabled": "on"})
    assert bad.status_code == 200 and b"a set needs two words" in bad.content


@pytest.mark.django_db
def test_staff_import_and_export_the_file_with_the_right_permissions(client):
    client.force_login(staff("view_synonym"))
    upload = SimpleUploadedFile("synonyms.txt", FILE.encode())
    assert client.post(reverse("admin:clip_search_synonym_import"), {"file": upload}).status_code == 403
    User.objects.all().delete()
    client.force_login(staff("add_synonym", "view_synonym"))
    changelist = client.get(reverse("admin:clip_search_synonym_changelist"))
    assert b"Import file" in changelist.content and b"Export file" in changelist.content
    response = client.post(reverse("admin:clip_search_synonym_import"),
                           {"file": SimpleUploadedFile("synonyms.txt", FILE.encode())})
    assert response.status_code == 302 and Synonym.objects.count() == 3
    replace = client.post(reverse("admin:clip_search_synonym_import"),
                          {"file": SimpleUploadedFile("s.txt", b"a, b\n"), "replace": "on"})
    assert replace.status_code == 403 and Synonym.objects.count() == 3  # replacing deletes: needs delete
    broken = client.post(reverse("admin:clip_search_synonym_import"),
                         {"file": SimpleUploadedFile("s.txt", b"\xff\xfe bad")})
    assert broken.status_code == 200 and b"not UTF-8" in broken.content
    exported = client.get(reverse("admin:clip_search_synonym_export"))
    assert exported["Content-Disposition"] == 'attachment; filename="synonyms.txt"'
    assert set(synonyms.parse_file(exported.content.decode())) == set(synonyms.parse_file(FILE))


def test_the_command_reads_stdin(monkeypatch, db):
    monkeypatch.setattr("sys.stdin", io.StringIO("tee, t-shirt\n"))
    call_command("clip_synonyms", "--import", "-")
    assert Synonym.objects.get().terms == ["tee", "t-shirt"]
