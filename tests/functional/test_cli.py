"""The command line as the README describes it, including its refusals."""

from pathlib import Path

from sqlalchemy import func, select

from portal.extensions import db
from portal.models import File, FileVersion, Group, User


def objects(app) -> list[Path]:
    root = Path(app.config["STORAGE_URL"].removeprefix("file://")) / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file())


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_user_create_and_duplicate(app, runner):
    result = runner.invoke(args=["user", "create", "alice", "--password", "s3cret-pass",
                                 "--role", "staff", "--group", "CS2023", "--group", "STAFF"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.scalar(select(User).where(User.username == "alice"))
        assert user.role == "staff" and user.group_names == {"CS2023", "STAFF"}
        assert user.check_password("s3cret-pass") and not user.check_password("wrong")
    again = runner.invoke(args=["user", "create", "alice", "--password", "other-pass"])
    assert again.exit_code != 0
    assert again.output.strip().splitlines() == ["Error: user 'alice' already exists"]
    assert count(app, User) == 1


def test_user_create_refuses_short_password_and_bad_role(app, runner):
    assert runner.invoke(args=["user", "create", "bob", "--password", "short"]).exit_code != 0
    assert runner.invoke(args=["user", "create", "bob", "--password", "long-enough",
                               "--role", "root"]).exit_code != 0
    assert count(app, User) == 0


def test_user_import_creates_and_updates(app, runner, tmp_path):
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(
        "username,display_name,role,groups,password\n"
        "2023001,李四,student,CS2023;MATH,pass-word-1\n"
        "t01,王老师,staff,STAFF,\n", encoding="utf-8")
    result = runner.invoke(args=["user", "import", str(csv_file)])
    assert result.exit_code == 0, result.output
    assert "created 2, updated 0" in result.output
    csv_file.write_text("username,display_name,role,groups,password\n"
                        "2023001,李四(改),admin,CS2023,\n", encoding="utf-8")
    result = runner.invoke(args=["user", "import", str(csv_file)])
    assert "created 0, updated 1" in result.output
    with app.app_context():
        li = db.session.scalar(select(User).where(User.username == "2023001"))
        assert (li.display_name, li.role, li.group_names) == ("李四(改)", "admin", {"CS2023"})
        assert li.check_password("pass-word-1")  # an empty password keeps the old one
        teacher = db.session.scalar(select(User).where(User.username == "t01"))
        assert teacher.password_hash is None and not teacher.check_password("")
        assert db.session.scalar(select(func.count()).select_from(Group)) == 3


def test_user_import_bad_row_changes_nothing(app, runner, tmp_path):
    csv_file = tmp_path / "users.csv"
    csv_file.write_text("username,display_name,role,groups,password\n"
                        "ok1,A,student,,password-1\nbad,B,wizard,,password-2\n")
    result = runner.invoke(args=["user", "import", str(csv_file)])
    assert result.exit_code != 0 and "unknown role 'wizard'" in result.output
    assert count(app, User) == 0


def test_file_add_prints_id_and_title_and_versions(app, runner, tmp_path):
    a = tmp_path / "课程表.pdf"
    a.write_bytes(b"%PDF-1.4 one")
    result = runner.invoke(args=["file", "add", str(a), "--category", "课程表",
                                 "--access", "public"])
    assert result.exit_code == 0, result.output
    file_id, title = result.output.strip().split("\t")
    assert title == "课程表"
    a.write_bytes(b"%PDF-1.4 two")
    result = runner.invoke(args=["file", "add", str(a), "--category", "课程表"])
    assert result.output.strip() == f"{file_id}\t课程表"
    with app.app_context():
        file = db.session.get(File, int(file_id))
        assert [v.number for v in file.versions] == [1, 2]
        assert file.access == "public"  # a new version keeps the rule
        assert file.latest.mime_type == "application/pdf"
        assert file.latest.original_filename == "课程表.pdf"
    assert len(objects(app)) == 2


def test_file_add_same_content_stored_once(app, runner, tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("identical")
    result = runner.invoke(args=["file", "add", str(tmp_path / "a.txt"), str(tmp_path / "b.txt")])
    assert result.exit_code == 0
    assert len(result.output.strip().splitlines()) == 2
    assert len(objects(app)) == 1


def test_file_add_bad_paths_change_nothing(app, runner, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine")
    (tmp_path / "folder").mkdir()
    for bad in (tmp_path / "missing.txt", tmp_path / "folder"):
        result = runner.invoke(args=["file", "add", str(good), str(bad)])
        assert result.exit_code == 1
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.startswith("Error: ")
    assert runner.invoke(args=["file", "add", str(good), "--access", "nobody"]).exit_code == 1
    assert runner.invoke(args=["file", "add", str(good), "--owner", "ghost"]).exit_code == 1
    assert count(app, File) == 0 and count(app, FileVersion) == 0
    assert objects(app) == []


def test_file_add_unreadable(app, runner, tmp_path, monkeypatch):
    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    monkeypatch.setattr("os.access", lambda path, mode: False)  # root can read anything
    result = runner.invoke(args=["file", "add", str(locked)])
    assert result.exit_code == 1 and "not readable" in result.output
    assert count(app, File) == 0


def test_demo_is_realistic_and_idempotent(app, runner):
    result = runner.invoke(args=["demo", "--big-mb", "2"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        files = db.session.scalars(select(File)).all()
        categories = {f.category for f in files}
        assert {"课程表", "成绩单", "证明文件", "课程资料"} <= categories
        assert len(files) >= 24
        assert any(f.access.startswith("user:") for f in files)
        big = max((f.latest for f in files), key=lambda v: v.size)
        assert big.size == 2 * 1024 * 1024 and big.original_filename.endswith(".mp4")
        roles = {u.role for u in db.session.scalars(select(User))}
        assert roles == {"student", "staff", "admin"}
    before = count(app, FileVersion)
    assert runner.invoke(args=["demo", "--big-mb", "2"]).exit_code == 0
    assert count(app, FileVersion) == before
