"""The course data may live in object storage: an S3-compatible server on this machine (moto).

Here: Phase 2's yardsticks (the ceiling's input and the naive baseline), the notebook's and the
grader's own (graders/trusted/yardsticks.py), read the reviews from s3://.
The Phase 1 validation runs with its data built into s3:// on a two-node cluster
(tests/test_cluster.py): Ray Data and the hidden tests read it through pyarrow's S3 filesystem.
"""

import pytest

from conftest import s3_server
from graders import data

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_root():
    with s3_server() as root:
        yield root


def test_phase2_yardsticks_read_the_reviews_from_s3(s3_root):
    import ray

    from graders import perf

    paths = data.prepare(root=s3_root)
    assert paths.reviews.startswith("s3://course-data/data/small/reviews?")
    assert data.read_reviews(paths.reviews, kept=True).num_rows == data.counts().reviews_kept  # the ceiling's input
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:  # the naive baseline reads the reviews through Ray
        embedded = perf.naive_embedding_pipeline(paths.reviews, max_rows=120).count()
        assert 110 <= embedded < 120  # 120 reviews read; every 32nd review has no words and is dropped
    finally:
        ray.shutdown()
    from graders.trusted.yardsticks import YardstickProcess

    grader = YardstickProcess(paths.reviews)  # started with the server's credentials in its environment
    try:
        measured = grader.measure()
    finally:
        grader.close()
    assert "error" not in measured and measured["ceiling"] > measured["naive"] > 0, measured
