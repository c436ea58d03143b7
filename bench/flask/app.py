"""The anchor: the hello-birthday API written the usual way in Flask.

A connection per request, a commit per PUT, SQLite with its default rollback
journal, served by Flask's own threaded server (`python3 app.py`). The
benchmark compares the Rust service against this; it is not meant to be
improved. Environment: PORT (5000), DATABASE (hello.db).
"""
import datetime
import os
import re
import sqlite3

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

app = Flask(__name__)
DATABASE = os.environ.get("DATABASE", "hello.db")
USERNAME = re.compile(r"^[A-Za-z]{1,64}$")


def db() -> sqlite3.Connection:
    return sqlite3.connect(DATABASE, timeout=30)


with db() as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS users "
                 "(username TEXT PRIMARY KEY, date_of_birth TEXT NOT NULL)")


@app.route("/hello/<username>", methods=["PUT"])
def put_user(username: str) -> ResponseReturnValue:
    body = request.get_json(silent=True)
    if not USERNAME.match(username) or not isinstance(body, dict):
        return jsonify(error="bad request"), 400
    try:
        dob = datetime.date.fromisoformat(body.get("dateOfBirth", ""))
    except (TypeError, ValueError):
        return jsonify(error="bad date"), 400
    if dob >= datetime.date.today():
        return jsonify(error="date must be in the past"), 400
    conn = db()
    with conn:
        conn.execute("INSERT OR REPLACE INTO users VALUES (?, ?)", (username, dob.isoformat()))
    conn.close()
    return "", 204


@app.route("/hello/<username>", methods=["GET"])
def get_user(username: str) -> ResponseReturnValue:
    if not USERNAME.match(username):
        return jsonify(error="bad request"), 400
    conn = db()
    row = conn.execute("SELECT date_of_birth FROM users WHERE username = ?", (username,)).fetchone()
    conn.close()
    if row is None:
        return jsonify(error="not found"), 404
    dob = datetime.date.fromisoformat(row[0])
    today = datetime.date.today()
    try:
        birthday = dob.replace(year=today.year)
    except ValueError:  # Feb 29 in a common year
        birthday = datetime.date(today.year, 2, 28)
    if birthday < today:
        try:
            birthday = dob.replace(year=today.year + 1)
        except ValueError:
            birthday = datetime.date(today.year + 1, 2, 28)
    days = (birthday - today).days
    if days == 0:
        return jsonify(message=f"Hello, {username}! Happy birthday!")
    return jsonify(message=f"Hello, {username}! Your birthday is in {days} days")


@app.route("/readyz")
def readyz() -> ResponseReturnValue:
    return jsonify(status="ready")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
