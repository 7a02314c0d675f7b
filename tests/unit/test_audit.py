from hounsfield.audit import Action, Entry, Outcome, query, record, record_many


def test_record_and_query(any_archive):
    record(any_archive, Entry(Action.LOGIN, actor="alice", role="admin", source="10.0.0.5"))
    record_many(any_archive, [
        Entry(Action.C_STORE, actor="CT_SCANNER", source="CT_SCANNER@10.0.0.9",
              study_instance_uid="1.2.3", patient_id="P1"),
        Entry(Action.LOGIN, actor="mallory", outcome=Outcome.SERIOUS_FAILURE, source="10.6.6.6"),
    ])
    with any_archive.session() as s:
        rows = query(s)
        assert [r.action for r in rows] == ["LOGIN", "C-STORE", "LOGIN"]
        failed = query(s, {"outcome": "8"})
        assert [r.actor for r in failed] == ["mallory"]
        (store,) = query(s, {"study_instance_uid": "1.2.3"})
        assert store.event_id.startswith("110104") and store.event_action == "C"
