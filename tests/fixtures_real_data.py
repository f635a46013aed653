"""Small datasets shaped like published instruction data, for tests/test_real_formats.py; holds no tests.

Each builder writes an annotation file and real media (PIL-written JPEGs, mp4s from
`data_recipes.video.write_video`) under a folder, and returns a `Fixture`: the annotation path, the
media root, and what the build must make of every record, by id:

    ("sample", kind, n_images)   written; kind image | multi_image | text_only | video
    ("bad", reason)              a manifest `bad` / `skipped` reason
    ("unsupported", reason)      a manifest `unsupported` reason

The shapes follow the published formats (the content is our own):
- LLaVA-1.5 `llava_v1_5_mix665k.json`: `{"id", "image": "coco/train2017/....jpg", "conversations":
  [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}`, text-only
  ShareGPT records without `image`, multi-image records with a list of paths;
- LLaVA-Video-178K: `{"id", "conversations": [...], "data_source", "video": "academic_source/....mp4"}`,
  the tag written `<image>` (as the published files do) or `<video>`;
- LLaMA-Factory / TRL ShareGPT: `{"messages": [{"role", "content"}], "images": [...]}` and
  `{"messages": [...], "videos": [...]}`, content as a tagged string or a list of typed parts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from data_recipes.video import write_video


@dataclass
class Fixture:
    annotations: Path
    media_root: Path
    expected: dict = field(default_factory=dict)  # record id -> ("sample", kind, n) | ("bad"|"unsupported", reason)
    adjusted: dict = field(default_factory=dict)  # record id -> what the build must change: the first user text

    @property
    def good(self) -> int:
        return sum(1 for e in self.expected.values() if e[0] == "sample")


def jpeg(path: Path, seed: int, size=(56, 40)) -> Path:
    """A real JPEG with some structure (a gradient and a shape), as a camera file would be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    d = ImageDraw.Draw(im)
    x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
    d.ellipse([x, y, x + size[0] // 3, y + size[1] // 3], fill=(rng.randrange(256), rng.randrange(256), 40))
    im.save(path, format="JPEG", quality=90)
    return path


def mp4(path: Path, seed: int, n_frames: int = 12, size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.new("RGB", size, ((seed * 40 + 15 * k) % 256, 100, (200 - 12 * k) % 256)) for k in range(n_frames)]
    return write_video(path, frames)


def truncated_jpeg(path: Path, seed: int) -> Path:
    jpeg(path, seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _write(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path


def h(value: str) -> dict:
    return {"from": "human", "value": value}


def g(value: str) -> dict:
    return {"from": "gpt", "value": value}


# --- LLaVA-1.5 mix665k ------------------------------------------------------------------------------
COLORS = ["red", "white", "blue", "green", "yellow", "black"]


def mix665k(root: Path) -> Fixture:
    """mix665k-style records: COCO/GQA/VG single images with the tag first, last or inside the
    question, multi-turn; ShareGPT text-only; multi-image lists; plus broken and unsupported ones."""
    media = root / "images"
    fx = Fixture(root / "llava_v1_5_mix665k.json", media)
    recs = []
    for i in range(12):
        coco = f"{i * 7919 + 33471:012d}"
        rel = f"coco/train2017/{coco}.jpg" if i % 3 else f"gqa/images/{2350000 + i}.jpg"
        jpeg(media / rel, i)
        question = ["<image>\nWhat are the colors of the bus in the image?",
                    "What is the man holding in his hand?\n<image>",
                    "Look at this picture: <image> How many people are visible?"][i % 3]
        conv = [h(question), g(f"The bus in the image is {COLORS[i % 6]} and {COLORS[(i + 1) % 6]}.")]
        if i % 2:  # multi-turn, as most of mix665k's COCO conversations are
            conv += [h("What feature can be seen on the back of the bus?"), g("There is an advertisement on it."),
                     h("Is the bus driving down the street or pulled off to the side?"),
                     g("The bus is driving down the street, which is crowded with people and other vehicles.")]
        recs.append({"id": coco, "image": rel, "conversations": conv})
        fx.expected[coco] = ("sample", "image", 1)
    # a record without a tag (LLaVA puts the image before the first question)
    jpeg(media / "vg/VG_100K/2356347.jpg", 99)
    recs.append({"id": "VG_2356347", "image": "vg/VG_100K/2356347.jpg",
                 "conversations": [h("Describe the scene briefly."), g("A kitchen with a stove and a window.")]})
    fx.expected["VG_2356347"] = ("sample", "image", 1)
    # ShareGPT text-only conversations: no image key at all (one exported with "image": null)
    for i in range(5):
        rid = f"i6IyJda_{i}"
        rec = {"id": rid, "model": "", "conversations": [
            h(f"Summarize in one sentence: the meeting {i} moved to Thursday because the room was booked."),
            g(f"Meeting {i} was moved to Thursday since the room was taken.")]}
        if i == 4:
            rec["image"] = None
            rec["conversations"] += [h("And in three words?"), g("Meeting moved Thursday.")]
        recs.append(rec)
        fx.expected[rid] = ("sample", "text_only", 0)
    # a ShareGPT conversation cut out of a longer chat: it opens with the assistant (LLaVA's training drops
    # that turn and keeps the rest)
    recs.append({"id": "QWJhYvA_0", "model": "", "conversations": [
        g("Sure! Here is the rest of the story: the knight rode home and the village celebrated."),
        h("Can you give the story a title?"), g("The Knight's Return.")]})
    fx.expected["QWJhYvA_0"] = ("sample", "text_only", 0)
    fx.adjusted["QWJhYvA_0"] = "Can you give the story a title?"
    # multi-image records: a list of paths, as many <image> tags
    for i in range(3):
        rels = [f"ocr_vqa/images/{140031996 + i * 10 + j}.jpg" for j in range(2 + i % 2)]
        for j, rel in enumerate(rels):
            jpeg(media / rel, 200 + 10 * i + j)
        tags = " ".join(f"Image {j + 1}: <image>" for j in range(len(rels)))
        rid = f"multi_{i}"
        recs.append({"id": rid, "image": rels, "conversations": [
            h(f"{tags}\nWhich of these book covers is the odd one out?"), g(f"The cover in image {1 + i % len(rels)}.")]})
        fx.expected[rid] = ("sample", "multi_image", len(rels))
    # a single image given as a one-item list
    jpeg(media / "textvqa/train_images/0054c91397f2fe05.jpg", 300)
    recs.append({"id": "0054c91397f2fe05", "image": ["textvqa/train_images/0054c91397f2fe05.jpg"],
                 "conversations": [h("<image>\nWhat number is on the jersey?\nReference OCR token: 23"), g("23")]})
    fx.expected["0054c91397f2fe05"] = ("sample", "image", 1)
    # bad: missing file, unreadable JPEG, a conversation without a gpt turn, gpt first
    recs.append({"id": "missing_coco", "image": "coco/train2017/000000999999.jpg",
                 "conversations": [h("<image>\nWhat is this?"), g("A cat.")]})
    fx.expected["missing_coco"] = ("bad", "missing_image")
    truncated_jpeg(media / "coco/train2017/000000000666.jpg", 666)
    recs.append({"id": "cut_coco", "image": "coco/train2017/000000000666.jpg",
                 "conversations": [h("<image>\nWhat is this?"), g("A dog.")]})
    fx.expected["cut_coco"] = ("bad", "unreadable_image")
    recs.append({"id": "no_answer", "image": f"coco/train2017/{33471:012d}.jpg",
                 "conversations": [h("<image>\nWhat is this?")]})
    fx.expected["no_answer"] = ("bad", "malformed_conversation")
    recs.append({"id": "gpt_first", "conversations": [g("Hello! How can I help?"), h("Tell me a joke.")]})
    fx.expected["gpt_first"] = ("bad", "malformed_conversation")
    # unsupported: tags that do not pair with the files, a video record, audio
    recs.append({"id": "two_tags_one_image", "image": f"coco/train2017/{33471:012d}.jpg",
                 "conversations": [h("<image>\nCompare <image> with the first."), g("They are the same.")]})
    fx.expected["two_tags_one_image"] = ("unsupported", "media_tag_mismatch")
    recs.append({"id": "html_tag", "conversations": [
        h("How do I show a picture in a page with <image> or <img>?"), g("Use the img element.")]})
    fx.expected["html_tag"] = ("unsupported", "media_tag_mismatch")
    recs.append({"id": "video_chatgpt_1", "video": "v_abc.mp4", "conversations": [h("<video>\nWhat happens?"), g("x")]})
    fx.expected["video_chatgpt_1"] = ("unsupported", "video_in_image_recipe")
    recs.append({"id": "speech_1", "audio": "clip.wav", "conversations": [h("<audio>\nTranscribe."), g("Hello.")]})
    fx.expected["speech_1"] = ("unsupported", "audio")
    _write(fx.annotations, recs)
    return fx


# --- LLaVA-Video-178K --------------------------------------------------------------------------------
def llava_video_178k(root: Path) -> Fixture:
    """LLaVA-Video-178K-style records (open-ended and multiple-choice QA, captions), mp4 under
    `academic_source/...` and `liwei_youtube_videos/...`, plus broken and unsupported ones."""
    media = root / "videos"
    fx = Fixture(root / "0_30_s_academic_oe_v0_1_qa_processed.json", media)
    recs = []
    for i in range(8):
        rel = (f"academic_source/Charades/{'ABCDEFGH'[i]}{i}XQ7.mp4" if i % 2 else
               f"liwei_youtube_videos/videos/youtube_video_2024/ytb_{i:03d}kT9.mp4")
        mp4(media / rel, i)
        tag = "<image>" if i % 2 else "<video>"
        if i % 3 == 0:
            conv = [h(f"{tag}\nWhat is the person doing at the beginning of the video?\nA. Cooking\nB. Reading\n"
                      "C. Cleaning\nD. Sleeping\nAnswer with the option's letter from the given choices directly."),
                    g("B.")]
        else:
            conv = [h(f"{tag}\nWhat does the person pick up after entering the room?"),
                    g(f"The person picks up a {COLORS[i % 6]} towel from the chair."),
                    h("Where does the person go next?"), g("They walk to the window and open it.")]
        rid = f"{'v_' if i % 2 else 'ytb_'}{i:03d}"
        recs.append({"id": rid, "conversations": conv, "data_source": "0_30_s_academic_v0_1", "video": rel})
        fx.expected[rid] = ("sample", "video", None)
    # the tag after the question, and no tag at all (caption data)
    mp4(media / "academic_source/NextQA/1150_6.mp4", 20)
    recs.append({"id": "nextqa_1150_6", "video": "academic_source/NextQA/1150_6.mp4", "data_source": "0_30_s_nextqa",
                 "conversations": [h("Why did the boy run to the door?\n<video>"), g("To greet his father.")]})
    fx.expected["nextqa_1150_6"] = ("sample", "video", None)
    mp4(media / "academic_source/activitynet/v_cap01.mp4", 21)
    recs.append({"id": "cap01", "video": "academic_source/activitynet/v_cap01.mp4",
                 "conversations": [h("Describe this video in detail."), g("A man washes a bicycle in a yard.")]})
    fx.expected["cap01"] = ("sample", "video", None)
    # bad: a missing mp4, an mp4 that is not a video
    recs.append({"id": "gone", "video": "academic_source/Charades/GONE.mp4",
                 "conversations": [h("<image>\nWhat happens?"), g("Nothing.")]})
    fx.expected["gone"] = ("bad", "missing_video")
    (media / "academic_source/Charades/BROKEN.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00junk" * 40)
    recs.append({"id": "broken", "video": "academic_source/Charades/BROKEN.mp4",
                 "conversations": [h("<image>\nWhat happens?"), g("Nothing.")]})
    fx.expected["broken"] = ("bad", "unreadable_video")
    # unsupported in a video recipe: an image record, a text-only record, two tags for one video
    jpeg(media / "academic_source/still.jpg", 5)
    recs.append({"id": "still", "image": "academic_source/still.jpg", "conversations": [h("<image>\nWhat?"), g("A still.")]})
    fx.expected["still"] = ("unsupported", "image_in_video_recipe")
    recs.append({"id": "chat", "conversations": [h("Hi"), g("Hello.")]})
    fx.expected["chat"] = ("unsupported", "text_only_in_video_recipe")
    recs.append({"id": "twice", "video": rel, "conversations": [h("<video> then <video>?"), g("Same.")]})
    fx.expected["twice"] = ("unsupported", "media_tag_mismatch")
    _write(fx.annotations, recs)
    return fx


# --- LLaMA-Factory / TRL ShareGPT with images ---------------------------------------------------------------
def sharegpt_images(root: Path) -> Fixture:
    """`messages` + `images` records (LLaMA-Factory's mllm_demo shape; TRL's typed content parts), with
    system prompts, multi-image turns and text-only rows; plus broken and unsupported ones."""
    media = root / "data"
    fx = Fixture(root / "mllm_demo.json", media)
    recs = []
    for i in range(6):
        jpeg(media / f"mllm_demo_data/{i + 1}.jpg", 400 + i)
    for i in range(6):
        msgs = [{"role": "user", "content": "<image>Who are they?"},
                {"role": "assistant", "content": f"They are two players of team {i} celebrating a goal."}]
        images = [f"mllm_demo_data/{i + 1}.jpg"]
        if i % 2:  # a second image in the second user turn
            msgs += [{"role": "user", "content": "What are they doing now?<image>"},
                     {"role": "assistant", "content": "They are lifting the trophy."}]
            images.append(f"mllm_demo_data/{(i + 1) % 6 + 1}.jpg")
        rec = {"messages": msgs, "images": images}
        if i == 2:
            rec["system"] = "You are a helpful sports commentator."
        if i == 4:
            msgs.insert(0, {"role": "system", "content": "Answer briefly."})
        recs.append(rec)
        fx.expected[f"#{i}"] = ("sample", "multi_image" if i % 2 else "image", len(images))
    # TRL's conversational format: typed parts
    for i in range(3):
        recs.append({"messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What is in picture {i}?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"A ball and a shape, number {i}."}]}],
            "images": [f"mllm_demo_data/{i + 1}.jpg"]})
        fx.expected[f"#{len(recs) - 1}"] = ("sample", "image", 1)
    recs.append({"messages": [{"role": "user", "content": "Write a haiku about rain."},
                              {"role": "assistant", "content": "Soft rain on the roof\nthe gutters hum all night\n"
                                                               "morning smells of earth"}]})
    fx.expected[f"#{len(recs) - 1}"] = ("sample", "text_only", 0)
    # bad
    recs.append({"messages": [{"role": "user", "content": "<image>Who?"}], "images": ["mllm_demo_data/1.jpg"]})
    fx.expected[f"#{len(recs) - 1}"] = ("bad", "malformed_conversation")
    recs.append({"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "Me."}],
                 "images": ["mllm_demo_data/404.jpg"]})
    fx.expected[f"#{len(recs) - 1}"] = ("bad", "missing_image")
    # unsupported
    recs.append({"messages": [{"role": "user", "content": "What is the weather in Paris?"},
                              {"role": "function_call", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                              {"role": "observation", "content": '{"temp": 21}'},
                              {"role": "assistant", "content": "It is 21 degrees."}]})
    fx.expected[f"#{len(recs) - 1}"] = ("unsupported", "tool_turns")
    recs.append({"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A dog."}],
                 "images": ["https://example.org/dog.jpg"]})
    fx.expected[f"#{len(recs) - 1}"] = ("unsupported", "remote_media")
    recs.append({"messages": [{"role": "user", "content": "<image><image>Which is bigger?"},
                              {"role": "assistant", "content": "The first."}], "images": ["mllm_demo_data/1.jpg"]})
    fx.expected[f"#{len(recs) - 1}"] = ("unsupported", "media_tag_mismatch")
    recs.append({"messages": [{"role": "user", "content": "<audio>What is said?"}, {"role": "assistant", "content": "Hi."}],
                 "audios": ["mllm_demo_data/1.mp3"]})
    fx.expected[f"#{len(recs) - 1}"] = ("unsupported", "audio")
    _write(fx.annotations, recs)
    return fx


# --- LLaMA-Factory ShareGPT with videos (JSONL) ---------------------------------------------------------------
def sharegpt_videos(root: Path) -> Fixture:
    """`messages` + `videos` records in a .jsonl file (one a line), one video given as frame files,
    plus a line that is not JSON and unsupported rows."""
    media = root / "data"
    fx = Fixture(root / "mllm_video_demo.jsonl", media)
    recs = []
    for i in range(5):
        mp4(media / f"mllm_demo_data/{i + 1}.mp4", 30 + i, n_frames=10)
        recs.append({"messages": [{"role": "user", "content": "<video>Why is this video funny?"},
                                  {"role": "assistant", "content": f"Because the cat {i} falls off the sofa."}],
                     "videos": [f"mllm_demo_data/{i + 1}.mp4"]})
        fx.expected[f"#{i}"] = ("sample", "video", None)
    frames = [f"mllm_demo_data/frames_a/{k:04d}.jpg" for k in range(9)]
    for k, f in enumerate(frames):
        jpeg(media / f, 500 + k, size=(32, 32))
    recs.append({"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "A yellow disc."}]}],
                 "videos": [frames]})
    fx.expected[f"#{len(recs) - 1}"] = ("sample", "video", None)
    recs.append({"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "x"}],
                 "images": ["mllm_demo_data/frames_a/0000.jpg"]})
    fx.expected[f"#{len(recs) - 1}"] = ("unsupported", "image_in_video_recipe")
    recs.append({"messages": [{"role": "user", "content": "<video>What?"}, {"role": "assistant", "content": "x"}],
                 "videos": ["mllm_demo_data/1.mp4"], "images": ["mllm_demo_data/frames_a/0000.jpg"]})
    fx.expected[f"#{len(recs) - 1}"] = ("unsupported", "image_and_video")
    _write(fx.annotations, recs)
    with fx.annotations.open("a") as f:  # a line cut by a failed export: a bad record, the rest still read
        f.write('{"messages": [{"role": "user", "content": "<video>Wh\n')
    fx.expected["line 9"] = ("bad", "malformed_record")
    return fx
