"""Demo data: users, groups and a few dozen realistic documents, generated locally."""

from __future__ import annotations

import io
import random
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from .files import add_version
from .models import DownloadEvent, File, Group, User
from .storage import Storage

PASSWORD = "demo12345"

GROUPS = {"CS2023": "计算机科学与技术 2023 级", "MATH2024": "数学与应用数学 2024 级",
          "STAFF": "教务处"}

USERS = [  # username, display name, role, groups
    ("admin", "系统管理员", "admin", []),
    ("staff", "李老师 (教务处)", "staff", ["STAFF"]),
    ("student", "张三", "student", ["CS2023"]),
    ("2023001", "李四", "student", ["CS2023"]),
    ("2024015", "王五", "student", ["MATH2024"]),
]

TERM = "2026-2027学年第一学期"

DOCUMENTS = [  # title, filename, category, access, body
    (f"{TERM}全校课程表", "2026秋季学期课程表.pdf", "课程表", "public", "timetable"),
    ("计算机2023级课程表", "计算机2023级课程表.pdf", "课程表", "group:CS2023", "timetable"),
    ("数学2024级课程表", "数学2024级课程表.pdf", "课程表", "group:MATH2024", "timetable"),
    ("期末考试安排", "期末考试安排-2027年1月.pdf", "课程表", "login", "exams"),
    ("Final exam schedule (English)", "final-exam-schedule-2027.pdf", "课程表", "public",
     "exams"),
    ("校历 Academic calendar", "校历2026-2027.pdf", "课程表", "public", "calendar"),
    ("张三的成绩单", "成绩单-张三.pdf", "成绩单", "user:student", "transcript"),
    ("李四的成绩单", "成绩单-李四-2023001.pdf", "成绩单", "user:2023001", "transcript"),
    ("王五的成绩单", "Transcript-Wang-Wu.pdf", "成绩单", "user:2024015", "transcript"),
    ("张三的在读证明", "在读证明-张三.pdf", "证明文件", "user:student", "certificate"),
    ("李四的英语四级证书", "CET4证书-李四.pdf", "证明文件", "user:2023001", "certificate"),
    ("在读证明申请表", "在读证明申请表.docx.txt", "表格下载", "public", "form"),
    ("学生请假申请表", "学生请假申请表.txt", "表格下载", "login", "form"),
    ("Leave application form", "leave-application-form.txt", "表格下载", "public", "form"),
    ("奖学金申请表", "2026年奖学金申请表.csv", "表格下载", "login", "csv"),
    ("数据结构 第1章 绪论", "数据结构-第01章-绪论.pdf", "课程资料", "group:CS2023", "notes"),
    ("数据结构 第2章 线性表", "数据结构-第02章-线性表.pdf", "课程资料", "group:CS2023", "notes"),
    ("数据结构 第3章 栈和队列", "数据结构-第03章-栈和队列.pdf", "课程资料", "group:CS2023",
     "notes"),
    ("操作系统 实验指导书", "操作系统实验指导书.pdf", "课程资料", "group:CS2023", "notes"),
    ("计算机网络 习题集", "计算机网络习题集.pdf", "课程资料", "login", "notes"),
    ("高等数学 期中复习提纲", "高等数学期中复习提纲.pdf", "课程资料", "group:MATH2024", "notes"),
    ("线性代数 讲义", "线性代数讲义.pdf", "课程资料", "group:MATH2024", "notes"),
    ("概率论 作业答案", "概率论作业答案-第5周.pdf", "课程资料", "group:MATH2024", "notes"),
    ("Introduction to Algorithms - reading list", "algorithms-reading-list.txt", "课程资料",
     "login", "notes"),
    ("Python 程序设计 示例代码", "python示例代码.txt", "课程资料", "login", "notes"),
    ("学生手册 2026版", "学生手册2026.pdf", "通知公告", "public", "notes"),
    ("图书馆开放时间通知", "图书馆开放时间.txt", "通知公告", "public", "notes"),
    ("校园网使用指南", "校园网使用指南.pdf", "通知公告", "login", "notes"),
    ("教务处工作安排", "教务处工作安排.txt", "通知公告", "group:STAFF", "notes"),
]

# Classmates of the demo students: real accounts without a password (they cannot sign in),
# so that the seeded history has a believable number of different people in it.
SURNAMES = "赵钱孙周吴郑冯陈褚卫蒋沈韩杨朱秦许何吕施"
GIVEN = ("伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明",
         "超", "霞", "平", "刚", "桂英", "子涵", "雨轩", "浩然", "梓萱", "一鸣")
CLASSES = (("CS2023", "2023", 2, 40), ("MATH2024", "2024", 1, 32))  # group, prefix, first, last

HISTORY_EVENTS = 6000  # asked for; small files take fewer responses: ~3,000 requests,
# ~1,900 downloads over HISTORY_DAYS
HISTORY_DAYS = 60

BIG = ("数据结构 第1讲 课堂录像", "数据结构-第01讲-课堂录像.mp4", "讲座录像", "group:CS2023")


def minimal_pdf(lines: list[str]) -> bytes:
    """A small valid one-page PDF showing ASCII lines (no fonts to embed)."""
    text = " ".join(f"({line.encode('ascii', 'replace').decode()}) Tj T*" for line in lines)
    content = f"BT /F1 14 Tf 16 TL 72 760 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def document_body(title: str, filename: str, kind: str, rng: random.Random) -> bytes:
    """Plausible content for a demo document, sized like the real thing."""
    if filename.endswith(".pdf"):
        lines = [f"Campus portal demo document: {kind}", f"Reference {rng.randrange(10**8):08d}"]
        lines += [f"Row {i}: " + " ".join(rng.choice(["Mon", "Tue", "Wed", "Thu", "Fri"])
                                          for _ in range(6)) for i in range(rng.randint(5, 30))]
        return minimal_pdf(lines)
    if filename.endswith(".csv"):
        rows = ["学号,姓名,班级,申请类别"] + [
            f"2023{i:03d},学生{i},计算机2023级,{rng.choice(['国家奖学金', '校级奖学金'])}"
            for i in range(1, rng.randint(20, 80))]
        return ("\n".join(rows) + "\n").encode("utf-8")
    paragraphs = [f"{title}\n", "本文件由校园文件门户演示数据生成。\n"]
    rule = "第{}条：请按时提交材料，逾期不予受理。\n"
    paragraphs += [rule.format(i) for i in range(1, rng.randint(5, 40))]
    return "".join(paragraphs).encode("utf-8")


class RandomStream(io.RawIOBase):
    """A readable stream of `size` pseudo-random bytes, generated as it is read."""

    def __init__(self, size: int, seed: int) -> None:
        self.remaining = size
        self.rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.remaining)
        buffer[:n] = self.rng.randbytes(n)
        self.remaining -= n
        return n


def seed(session: Session, storage: Storage, *, big_file_mb: int = 100) -> str:
    """Create what is missing of the demo; running it again changes nothing."""
    groups = {}
    for name, description in GROUPS.items():
        group = session.scalar(select(Group).where(Group.name == name))
        if group is None:
            group = Group(name=name, description=description)
            session.add(group)
        groups[name] = group
    users = {}
    new_users = 0
    for username, display, role, member_of in USERS:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            user = User(username=username, display_name=display, role=role)
            user.set_password(PASSWORD)
            user.groups = [groups[g] for g in member_of]
            session.add(user)
            new_users += 1
        users[username] = user
    names = iter(f"{s}{g}" for g in GIVEN for s in SURNAMES)
    for group, prefix, first, last in CLASSES:
        for n in range(first, last + 1):
            username = f"{prefix}{n:03d}"
            display = next(names)
            if username in users or session.scalar(
                    select(User.id).where(User.username == username)) is not None:
                continue
            session.add(User(username=username, display_name=display, role="student",
                             password_hash=None, groups=[groups[group]]))
            new_users += 1
    session.flush()

    rng = random.Random(2026)
    new_files = 0
    existing = set(session.execute(select(File.title, File.category)).all())
    for title, filename, category, access, kind in DOCUMENTS:
        body = document_body(title, filename, kind, rng)
        if (title, category) in existing:
            continue
        add_version(session, storage, io.BytesIO(body), filename=filename, title=title,
                    category=category, access=access, owner=users["staff"],
                    uploader=users["staff"], description=f"{category} · {TERM}")
        new_files += 1
    title, filename, category, access = BIG
    if big_file_mb > 0 and (title, category) not in existing:
        stream = io.BufferedReader(RandomStream(big_file_mb * 1024 * 1024, seed=7), 1024 * 1024)
        add_version(session, storage, stream, filename=filename, title=title, category=category,
                    access=access, owner=users["staff"], uploader=users["staff"],
                    description=f"{big_file_mb} MB 课堂录像，适合用下载工具断点续传")
        new_files += 1
    session.commit()
    return (f"demo: {new_users} users and {new_files} documents added "
            f"(password for every demo user: {PASSWORD})")


def seed_history(conn: Connection, settings, *, events: int = HISTORY_EVENTS,
                 days: int = HISTORY_DAYS, now: datetime | None = None) -> str:
    """A term of download history over the demo's own documents and users, once: nothing
    when some download is already recorded (a second run, or a portal in use)."""
    from .analytics.simulate import simulate

    if events <= 0 or conn.execute(select(DownloadEvent.id).limit(1)).first() is not None:
        return "demo: download history already present" if events > 0 else ""
    report = simulate(conn, settings, events=events, days=days, seed=2026, now=now)
    return (f"demo: {report['events']} download requests ({report['logical_downloads']} "
            f"downloads) by {report['users']} people over the last {days} days")
