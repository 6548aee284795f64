import subprocess

from loopline.offline.lineage import git_commit


def git(root, *args):
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_commit_and_dirty_flag_ignore_the_data_pointer(tmp_path):
    assert git_commit(tmp_path) == ("unknown", False)
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "data.dvc").write_text("outs: []\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "x")
    sha, dirty = git_commit(tmp_path)
    assert len(sha) == 40 and not dirty
    (tmp_path / "data.dvc").write_text("outs: [{md5: abc}]\n")  # the pipeline's own output
    assert git_commit(tmp_path) == (sha, False)
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == (sha, True)
