"""Edits of a COCO json's dict for the tests of its checks (each returns a function that edits the dict in place),
and the endings the checks' messages share."""

BOX = "; fix or remove it"
AREA = "; give the object's area in pixels (its mask's, or width * height of its bbox for box-only data)"


def first_bbox(bbox):
    def edit(coco):
        coco["annotations"][0]["bbox"] = bbox

    return edit


def first_annotation_without(key):
    def edit(coco):
        del coco["annotations"][0][key]

    return edit


def first_annotation(**fields):
    def edit(coco):
        coco["annotations"][0].update(fields)

    return edit


def first_image(**fields):
    def edit(coco):
        coco["images"][0].update(fields)

    return edit


def first_image_without(key):
    def edit(coco):
        del coco["images"][0][key]

    return edit
