from slade.fingerprint import fingerprint_differences


def test_keys_on_one_side_only_do_not_count():
    saved = {"student": {"steps": 10, "gone": 1}, "seed": 0}
    assert fingerprint_differences(saved, {"student": {"steps": 10, "new": 2}, "seed": 0}) == []
    assert fingerprint_differences(saved, {"student": {"steps": 11}, "seed": 0}) == ["student.steps"]


def test_a_setting_added_since_reads_as_its_value_of_before():
    # Written before pseudo_labels.method existed: those pseudo labels were k-means ones.
    saved = {"pseudo_labels": {"clusters": 300}, "seed": 0}
    assert fingerprint_differences(saved, {"pseudo_labels": {"clusters": 300, "method": "kmeans"}}) == []
    assert fingerprint_differences(saved, {"pseudo_labels": {"clusters": 300, "method": "dbscan"}}) == [
        "pseudo_labels.method"]
    # Only where the saved fingerprint has that section: a student's has no pseudo_labels.
    assert fingerprint_differences({"student": {"steps": 1}}, {"pseudo_labels": {"method": "dbscan"}}) == []
