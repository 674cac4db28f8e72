"""A scan's report for people: HTML pages and pictures (strips, timeline, heatmaps) from a scan's JSON."""
