"""What the notebooks use to teach, beside the package proper (notebooks 00-11).

    env            00-11  reproducible setup (seeds, threads, float64) and the environment check of notebook 00
    streams        03-05  synthetic key-value streams: surprising events, episodes, distribution shifts
    tasks          07-08  small token tasks (recall beyond a segment, sparse copy) and a short training loop
    recall         09-10  the far/near recall task, its loss, scores and training loop
    demo                  the ten-second look at the memory behind ``python -m titans_edu.demo``
"""
