"""``python -m titans_edu.demo``: the memory alone, writing key-value pairs at test time (:mod:`titans_edu.course.demo`)."""

from .course.demo import main

if __name__ == "__main__":
    main()
