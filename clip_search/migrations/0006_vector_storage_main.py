from django.db import migrations


class Migration(migrations.Migration):
    """Vectors inline in the image table's heap, not in TOAST.

    pgvector's type is stored EXTERNAL: a 512-d vector (2 kB) goes out of line, and every
    distance the search computes from the heap (the vector leg's output column, and the exact
    scan a selective filter takes: 2,000 rows at a 1 % filter of 200k) fetches it through the
    TOAST index first. MAIN keeps it in the row unless the row cannot fit a page (then it still
    moves out: no dimension is refused). Rows written before keep their storage until rewritten.
    """

    dependencies = [("clip_search", "0005_images_and_typed_keys")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE clip_search_imageembedding ALTER COLUMN vector SET STORAGE MAIN",
            "ALTER TABLE clip_search_imageembedding ALTER COLUMN vector SET STORAGE EXTERNAL",
        ),
    ]
