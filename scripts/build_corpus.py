# ruff: noqa: E501, T201 - long literal text lines are the point of this file; a CLI script
"""Build the calibration and evaluation texts shipped in llama3zh_local/data/.

    python scripts/build_corpus.py            # rewrite both files
    python scripts/build_corpus.py --check    # exit 1 if the shipped files differ

Deterministic (seeded). Hand-written paragraphs and Q&A (corpus_text.py) are split between the
two texts, never shared; templated documents (dialogues, instructions, news, numbers, code) are
drawn with different seeds, and any line of the evaluation text that also occurs in the
calibration text is dropped. Composition: docs/quantization.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus_text as T  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "llama3zh_local" / "data"
CALIBRATION = DATA / "llama3zh-calibration-v1.txt"
EVALUATION = DATA / "llama3zh-eval-v1.txt"
CALIBRATION_BYTES = 330_000
EVALUATION_BYTES = 90_000


# -- helpers ------------------------------------------------------------------------------------

# The hand-written items the templates may quote: set per corpus by build(), so that the
# evaluation text never quotes a translation or Q&A the calibration text has.
POOLS: dict[str, list] = {}


def zh_name(r: random.Random) -> str:
    return r.choice(T.ZH_SURNAMES) + r.choice(T.ZH_GIVEN)


def zh_date(r: random.Random) -> str:
    return f"{r.randint(1, 12)}月{r.randint(1, 28)}日"


def en_date(r: random.Random) -> str:
    months = ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"]  # fmt: skip
    return f"{r.choice(months)} {r.randint(1, 28)}"


def pct(r: random.Random, lo: float = 0.5, hi: float = 15.0) -> float:
    return round(r.uniform(lo, hi), 1)


# -- Chinese templates --------------------------------------------------------------------------


# plausible magnitudes for a city, per unit
_ZH_RANGES = {"万辆": (1, 200), "万人次": (100, 9000), "万人": (1, 60), "亿件": (1, 60),
              "万吨": (50, 3000), "万套": (0.5, 10), "亿人次": (1, 40)}  # fmt: skip


def zh_news(r: random.Random) -> str:
    city = r.choice(T.ZH_CITIES)
    ind, unit = r.choice(T.ZH_INDICATORS)
    lo, hi = _ZH_RANGES.get(unit, (50, 9000))
    value = round(r.uniform(lo, hi), 1)
    up = r.random() < 0.8
    p = pct(r)
    period = r.choice(["一季度", "上半年", "前三季度", "今年前五个月", "去年全年", "前十个月"])
    person = zh_name(r)
    return (
        f"【{city}讯】{zh_date(r)}，{city}市统计局发布数据显示，{period}全市{ind}达到{value}{unit}，"
        f"同比{'增长' if up else '下降'}{p}%。市统计局相关负责人{person}表示，"
        f"{r.choice(T.ZH_REASONS) if up else '受部分行业需求偏弱影响，指标出现小幅回落'}。"
        f"业内人士认为，{r.choice(T.ZH_OUTLOOKS)}。"
    )


def zh_weather(r: random.Random) -> str:
    city = r.choice(T.ZH_CITIES)
    hi = r.randint(-5, 38)
    lo = hi - r.randint(4, 12)
    wind = r.choice(
        ["北风三到四级", "东南风二到三级", "偏南风四到五级", "风力较小", "西北风五到六级，阵风七级"]
    )
    advice = r.choice([
        "早晚温差较大，请注意适时增减衣物。", "有降雨的地区，出行请携带雨具，注意交通安全。",
        "紫外线较强，外出请做好防晒。", "空气湿度较低，请注意防火。", "路面湿滑，驾车请减速慢行。",
    ])  # fmt: skip
    return (
        f"{city}市气象台{zh_date(r)}{r.choice(['6时', '11时', '17时'])}发布天气预报：今天白天"
        f"{r.choice(T.ZH_WEATHER)}，{wind}，最高气温{hi}℃；夜间{r.choice(T.ZH_WEATHER)}，"
        f"最低气温{lo}℃。明天{r.choice(T.ZH_WEATHER)}，气温{lo + 1}到{hi + r.randint(-2, 2)}℃。{advice}"
    )


def zh_sports(r: random.Random) -> str:
    a, b = r.sample(T.ZH_TEAMS, 2)
    ga, gb = r.randint(0, 4), r.randint(0, 3)
    res = "战胜" if ga > gb else ("战平" if ga == gb else "不敌")
    minute = r.randint(5, 88)
    return (
        f"在{zh_date(r)}晚进行的联赛第{r.randint(1, 30)}轮比赛中，{a}队主场以{ga}比{gb}{res}{b}队。"
        f"比赛第{minute}分钟，{a}队{r.choice(T.ZH_SURNAMES)}姓前锋在禁区内接队友传中头球破门"
        f"{'，打破僵局' if ga else '，但进球因越位被判无效'}。赛后，{a}队主教练表示："
        f"“{r.choice(['球员们执行了赛前的布置，防守非常专注。', '上半场我们踢得不好，下半场做了调整。', '这个结果我们可以接受，接下来要尽快恢复体能。'])}”"
        f"目前{a}队积{r.randint(10, 60)}分，暂列积分榜第{r.randint(1, 16)}位。"
    )


def zh_service_dialogue(r: random.Random) -> str:
    product, problem, months = r.choice(T.ZH_PRODUCTS)
    order = "".join(str(r.randint(0, 9)) for _ in range(12))
    staff = r.choice(["小李", "小王", "小陈", "小周", "小张"])
    days = r.randint(3, 60)
    in_warranty = days < int(months) * 30
    solution = (
        f"您的{product}还在{months}个月的保修期内，我们可以为您免费维修。"
        "稍后会有快递上门取件，维修周期大约五到七个工作日。"
        if in_warranty
        else f"您的{product}已经超过了保修期，我们可以提供付费维修，检测费三十元，具体费用以检测结果为准。"
    )
    return (
        f"用户：你好，我{days}天前在你们店买的{product}，现在{problem}，能帮我看看吗？\n"
        f"客服{staff}：您好，很抱歉给您带来不便。请问您的订单号是多少？\n"
        f"用户：订单号是{order}。\n"
        f"客服{staff}：好的，已经查到了。请问您有没有尝试过重启或者恢复出厂设置？\n"
        f"用户：{r.choice(['试过了，还是一样。', '还没有，怎么操作？', '重启以后好了一会儿，后来又不行了。'])}\n"
        f"客服{staff}：{solution}\n"
        f"用户：{r.choice(['好的，那就麻烦你们了。', '能不能直接换一台新的？', '维修期间有没有备用机可以用？'])}\n"
        f"客服{staff}：{r.choice(['没问题，我这边马上为您登记。', '根据规定，七天内可以换货，超过七天只能维修，请您理解。', '目前没有备用机，我们会尽量加快维修进度。'])}"
        "还有其他可以帮您的吗？\n用户：没有了，谢谢。\n"
        f"客服{staff}：不客气，祝您生活愉快！"
    )


def zh_doctor_dialogue(r: random.Random) -> str:
    sym, dur, detail = r.choice(T.ZH_SYMPTOMS)
    age = r.randint(18, 75)
    t = round(r.uniform(36.2, 38.6), 1)
    return (
        f"医生：您好，请坐。哪里不舒服？\n患者：医生，我{sym}已经{dur}了，{detail}。\n"
        f"医生：您今年多大年纪？有没有发烧？\n患者：我{age}岁，早上量了一下体温，{t}度。\n"
        f"医生：{'有点低烧。' if t >= 37.3 else '体温正常。'}以前有没有什么慢性病，或者对什么药物过敏？\n"
        f"患者：{r.choice(['没有。', '有高血压，一直在吃药。', '对青霉素过敏。'])}\n"
        f"医生：好的，我先给您检查一下。……情况不算严重，我给您开点药，按说明服用，"
        f"{r.choice(['多喝水，注意休息', '饮食清淡，少吃辛辣刺激的食物', '这段时间避免剧烈运动'])}。"
        f"如果{r.randint(2, 5)}天后还没有好转，或者症状加重，要及时来复诊。\n患者：好的，谢谢医生。"
    )


def zh_study_dialogue(r: random.Random) -> str:
    subj = r.choice(T.ZH_SUBJECTS)
    score = r.randint(55, 98)
    teacher = r.choice(T.ZH_SURNAMES) + "老师"
    return (
        f"学生：{teacher}，这次{subj}考试我只考了{score}分，感觉自己已经很努力了，为什么成绩还是上不去？\n"
        f"{teacher}：先别着急。你把试卷拿来，我们一起看看错在哪里。……你看，这几道题其实不是不会，"
        f"而是{r.choice(['审题不仔细', '计算出了错', '时间没有分配好，后面的题来不及做', '概念记混了'])}。\n"
        f"学生：确实是这样。那我应该怎么办？\n"
        f"{teacher}：建议你准备一个错题本，每次把错题抄下来，写清楚错误的原因和正确的思路，"
        f"每周复习一次。另外，平时做练习的时候给自己计时。坚持{r.randint(3, 8)}周，一定会有进步。\n"
        f"学生：好的，我今天就开始。谢谢老师！"
    )


def zh_trip_dialogue(r: random.Random) -> str:
    a, b = r.sample(T.ZH_CITIES, 2)
    days = r.randint(2, 7)
    budget = r.randint(2, 12) * 500
    return (
        f"{zh_name(r)}：下个月我想从{a}去{b}玩{days}天，预算{budget}元左右，你帮我参谋参谋？\n"
        f"朋友：可以啊。交通的话，{a}到{b}坐高铁大概{r.randint(2, 9)}个小时，提前买票能便宜一些。"
        f"住宿建议选在地铁站附近，每晚{r.randint(150, 500)}元就能找到不错的酒店。\n"
        f"{zh_name(r)}：那每天的行程怎么安排比较好？\n"
        f"朋友：第一天到了先别安排太多，逛逛老城区，晚上去吃当地的小吃；第二天去博物馆，"
        f"记得提前在网上预约；{'后面几天可以去周边的古镇或者山里走走。' if days > 3 else '最后一天买点特产就可以回来了。'}"
        f"按你的预算，交通、住宿和吃饭加起来应该够用，还能剩下{r.randint(2, 9)}百块买纪念品。"
    )


def zh_instruction(r: random.Random) -> str:
    kind = r.randrange(5)
    if kind == 0:
        zh, en = r.choice(POOLS["translations"])
        return f"### 指令：\n请把下面这句话翻译成英文。\n{zh}\n\n### 回答：\n{en}"
    if kind == 1:
        a, b, c = r.randint(12, 99), r.randint(3, 48), r.randint(100, 999)
        return (
            f"### 指令：\n请计算 {a} × {b} + {c}，并写出计算过程。\n\n### 回答：\n"
            f"先算乘法：{a} × {b} = {a * b}。\n再算加法：{a * b} + {c} = {a * b + c}。\n"
            f"所以结果是 {a * b + c}。"
        )
    if kind == 2:
        dish = r.choice(T.ZH_DISHES)
        return (
            f"### 指令：\n我晚上想做{dish}，但是从来没做过，需要注意什么？\n\n### 回答：\n"
            f"做{dish}有几个要点：第一，食材提前准备好，切配均匀，下锅后才不会手忙脚乱；"
            f"第二，注意火候，{r.choice(['大火快炒能保持口感', '需要小火慢慢煨入味', '油温不要太高，以免外焦里生'])}；"
            f"第三，调味宁少勿多，出锅前尝一下再补。第一次做可以按菜谱的用量来，熟练以后再根据自己的口味调整。"
        )
    if kind == 3:
        term, expl = r.choice(T.TECH_TERMS_ZH)
        return (
            f"### 指令：\n用通俗的语言解释“{term}”是什么意思，并举一个生活中的例子。\n\n### 回答：\n"
            f"“{term}”指的是{expl}。打个比方，"
            + r.choice(
                [
                    "就像把常用的调料放在灶台边，而不是每次都去储藏室拿。",
                    "就像超市多开几个收银台，让顾客分散排队。",
                    "就像快递驿站，先把包裹存起来，收件人有空时再去取。",
                    "就像图书馆的目录卡片，不用一排排书架去找。",
                ]
            )
            + "这样做的好处是效率更高，但也需要付出额外的管理成本。"
        )
    q, a = r.choice(POOLS["zh_qa"])
    return f"### 指令：\n{q}\n\n### 回答：\n{a}"


def zh_math_problem(r: random.Random) -> str:
    kind = r.randrange(4)
    if kind == 0:
        heads = r.randint(20, 60)
        rabbits = r.randint(1, heads - 1)
        legs = rabbits * 4 + (heads - rabbits) * 2
        return (
            f"题目：笼子里有鸡和兔共{heads}只，它们的脚一共有{legs}只。鸡和兔各有多少只？\n"
            f"解答：假设全部是鸡，则应有{heads * 2}只脚，比实际少了{legs - heads * 2}只。"
            f"每把一只鸡换成兔，脚数增加2只，所以兔有{legs - heads * 2}÷2={rabbits}只，"
            f"鸡有{heads}-{rabbits}={heads - rabbits}只。"
        )
    if kind == 1:
        v1, v2 = r.randint(40, 90), r.randint(50, 120)
        h = r.randint(2, 6)
        return (
            f"题目：甲、乙两车同时从相距{(v1 + v2) * h}千米的两地相向而行，甲车每小时行{v1}千米，"
            f"乙车每小时行{v2}千米。几小时后两车相遇？\n"
            f"解答：两车每小时共行{v1}+{v2}={v1 + v2}千米，所以相遇时间为{(v1 + v2) * h}÷{v1 + v2}={h}小时。"
        )
    if kind == 2:
        principal = r.randint(1, 50) * 10000
        rate = r.choice([1.5, 1.75, 2.0, 2.25, 2.6, 3.1])
        years = r.randint(1, 5)
        interest = round(principal * rate / 100 * years, 2)
        return (
            f"题目：{zh_name(r)}把{principal}元存入银行，定期{years}年，年利率{rate}%。到期后可以得到多少利息？\n"
            f"解答：利息=本金×年利率×年数={principal}×{rate}%×{years}={interest}元，"
            f"到期本息合计{principal + interest}元。"
        )
    price = r.randint(80, 2000)
    disc = r.choice([7, 7.5, 8, 8.5, 9, 9.5])
    return (
        f"题目：一件商品原价{price}元，现在打{disc}折出售，比原价便宜了多少元？\n"
        f"解答：现价为{price}×{disc / 10}={round(price * disc / 10, 2)}元，"
        f"便宜了{price}-{round(price * disc / 10, 2)}={round(price - price * disc / 10, 2)}元。"
    )


def zh_table(r: random.Random) -> str:
    city = r.choice(T.ZH_CITIES)
    shop = r.choice(["旗舰店", "社区店", "线上商城", "直营门店"])
    rows = []
    prev = r.randint(80, 400)
    total = 0
    for m in range(1, r.randint(4, 12) + 1):
        cur = max(20, round(prev * r.uniform(0.85, 1.2)))
        total += cur
        rows.append(f"| {m}月 | {cur} | {(cur - prev) / prev * 100:+.1f}% |")
        prev = cur
    return (
        f"{city}{shop}月度销售额统计（单位：万元）\n\n| 月份 | 销售额 | 环比 |\n|---|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\n合计：{total}万元，月均{total / len(rows):.1f}万元。"
    )


def zh_prose_glue(r: random.Random) -> str:
    term, expl = r.choice(T.TECH_TERMS_ZH)
    return (
        f"在工程实践中，{term}是一个经常被提到的概念，简单地说，就是{expl}。"
        f"{zh_name(r)}在{r.choice(T.ZH_CITIES)}的一家公司做后端开发，他说，刚入行时觉得{term}只是书本上的名词，"
        f"直到有一次线上系统在{r.choice(['促销活动', '月底结算', '春节前的高峰', '一次版本升级'])}期间出了问题，"
        f"排查了{r.randint(2, 30)}个小时才发现根源，才真正理解了它的重要性。"
    )


# -- English templates --------------------------------------------------------------------------


def en_news(r: random.Random) -> str:
    city = r.choice(T.EN_CITIES)
    ind, unit = r.choice(T.EN_INDICATORS)
    value = f"{r.uniform(10, 5000):,.1f}"
    up = r.random() < 0.75
    return (
        f"{city}, {en_date(r)}. Figures published by the regional statistics office show that {ind} "
        f"reached {value} {unit} in the {r.choice(['first quarter', 'second quarter', 'first half of the year', 'past twelve months'])}, "
        f"{'up' if up else 'down'} {pct(r)} percent from a year earlier. "
        f"{'The increase was driven by ' + r.choice(T.EN_REASONS) if up else 'The decline reflected weaker demand in several sectors'}, "
        f"according to {r.choice(T.EN_NAMES)} {r.choice(['Walker', 'Okafor', 'Lindqvist', 'Moreau', 'Tanaka', 'Silva'])}, "
        f"a senior statistician. {r.choice(T.EN_OUTLOOKS).capitalize()}."
    )


def en_weather(r: random.Random) -> str:
    hi = r.randint(-3, 36)
    lo = hi - r.randint(4, 11)
    return (
        f"Forecast for {r.choice(T.EN_CITIES)}, {en_date(r)}: {r.choice(T.EN_WEATHER)} during the day "
        f"with a high of {hi}°C, turning {r.choice(T.EN_WEATHER)} overnight with a low of {lo}°C. "
        f"Winds {r.choice(['light and variable', 'from the west at 15 to 25 km/h', 'from the north, gusting to 60 km/h'])}. "
        f"{r.choice(['Carry an umbrella if you are heading out in the afternoon.', 'A good day for outdoor plans.', 'Watch for icy patches on untreated roads.', 'Air quality is expected to be moderate.'])}"
    )


def en_sports(r: random.Random) -> str:
    a, b = r.sample(T.EN_TEAMS, 2)
    ga, gb = r.randint(0, 4), r.randint(0, 3)
    verdict = "beat" if ga > gb else ("drew with" if ga == gb else "lost to")
    return (
        f"{r.choice(T.EN_CITIES)} {a} {verdict} {b} {ga}-{gb} on {en_date(r)} in front of "
        f"{r.randint(3, 60):,},{r.randint(100, 999)} fans. {r.choice(T.EN_NAMES)} opened the scoring in the "
        f"{r.randint(3, 85)}th minute {r.choice(['with a low shot into the far corner', 'from the penalty spot', 'with a header from a corner'])}. "
        f'"{r.choice(["We stayed patient and it paid off.", "We have to be more clinical in front of goal.", "It was a tough game on a difficult pitch."])}" '
        f"the coach said afterwards. The result leaves {a} {r.choice(['third', 'seventh', 'top', 'second from bottom'])} in the table."
    )


def en_service_dialogue(r: random.Random) -> str:
    product, problem, months = r.choice(T.EN_PRODUCTS)
    agent = r.choice(T.EN_NAMES)
    days = r.randint(3, 90)
    return (
        f"Customer: Hi, I bought a {product} from your store {days} days ago and {problem}.\n"
        f"Agent ({agent}): I'm sorry to hear that. Could you give me your order number?\n"
        f"Customer: Sure, it's {r.randint(10**7, 10**8 - 1)}.\n"
        f"Agent ({agent}): Thanks. Have you tried restarting it or resetting it to factory settings?\n"
        f"Customer: {r.choice(['Yes, twice. No change.', 'No, how do I do that?', 'It worked for an hour and then the problem came back.'])}\n"
        f"Agent ({agent}): "
        + (
            f"Your {product} is still covered by the {months}-month warranty, so we'll repair or replace it for free. "
            "I'll email you a prepaid shipping label."
            if days < int(months) * 30
            else f"Unfortunately the {months}-month warranty has expired, but we can offer a repair for a fixed fee of 35 dollars."
        )
        + "\nCustomer: Okay, thanks for your help.\n"
        f"Agent ({agent}): You're welcome. Is there anything else I can do for you today?"
    )


def en_booking_dialogue(r: random.Random) -> str:
    n = r.randint(2, 8)
    hour = r.randint(6, 9)
    return (
        f"Host: Good afternoon, {r.choice(['Olive Tree', 'Blue Harbor', 'The Corner Table', 'Maple House'])} restaurant. How can I help you?\n"
        f"Guest: Hello, I'd like to book a table for {n} on {en_date(r)}, around {hour} p.m.\n"
        f"Host: Let me check. We have a table at {hour}:30, or one by the window at {hour + 1}:00.\n"
        f"Guest: {hour}:30 is fine. One of us is {r.choice(['vegetarian', 'allergic to nuts', 'gluten-intolerant'])}, is that a problem?\n"
        f"Host: Not at all, our menu marks every dish, and the kitchen can adapt the {r.choice(T.EN_DISHES)}. May I have a name for the booking?\n"
        f"Guest: {r.choice(T.EN_NAMES)}.\n"
        f"Host: Perfect, a table for {n} at {hour}:30 under {r.choice(T.EN_NAMES)}. See you then!"
    )


def en_instruction(r: random.Random) -> str:
    kind = r.randrange(4)
    if kind == 0:
        zh, en = r.choice(POOLS["translations"])
        return f"### Instruction:\nTranslate the following sentence into Chinese.\n{en}\n\n### Response:\n{zh}"
    if kind == 1:
        nums = [r.randint(1, 200) for _ in range(r.randint(5, 9))]
        mean = sum(nums) / len(nums)
        s = sorted(nums)
        mid = len(s) // 2
        median = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
        return (
            f"### Instruction:\nFind the mean and the median of these numbers: {', '.join(map(str, nums))}.\n\n"
            f"### Response:\nSorted: {', '.join(map(str, s))}. There are {len(s)} numbers and their sum is "
            f"{sum(nums)}, so the mean is {sum(nums)} / {len(s)} = {mean:.2f}. The median is {median:g}."
        )
    if kind == 2:
        dish = r.choice(T.EN_DISHES)
        k = r.randint(2, 6)
        return (
            f"### Instruction:\nI want to cook {dish} for {k} people tonight. Give me a short plan.\n\n"
            f"### Response:\n1. Check the recipe and make a shopping list scaled for {k} servings.\n"
            f"2. Prepare all ingredients before you turn on the stove: wash, chop, and measure.\n"
            f"3. Start with the part that takes longest, and keep the heat moderate.\n"
            f"4. Taste and adjust the seasoning at the end, not at the start.\n"
            f"5. Plan about {15 + 10 * k} minutes in total, and set the table while it simmers."
        )
    q, a = r.choice(POOLS["en_qa"])
    return f"### Instruction:\n{q}\n\n### Response:\n{a}"


def en_word_problem(r: random.Random) -> str:
    speed = r.randint(40, 110)
    hours = r.randint(2, 7)
    minutes = r.choice([0, 15, 30, 45])
    dist = speed * hours + speed * minutes / 60
    liters = round(dist * r.uniform(5.5, 8.5) / 100, 1)
    return (
        f"Problem: A car travels at an average speed of {speed} km/h for {hours} hours and {minutes} minutes. "
        f"How far does it go, and how much fuel does it use at {round(liters / dist * 100, 1)} liters per 100 km?\n"
        f"Solution: Time = {hours + minutes / 60:g} hours, so distance = {speed} × {hours + minutes / 60:g} = {dist:g} km. "
        f"Fuel = {dist:g} × {round(liters / dist * 100, 1)} / 100 ≈ {liters} liters."
    )


def en_table(r: random.Random) -> str:
    items = r.sample(["Rent", "Groceries", "Transport", "Utilities", "Internet", "Insurance",
                      "Dining out", "Books", "Gym", "Savings"], 6)  # fmt: skip
    amounts = [round(r.uniform(20, 1500), 2) for _ in items]
    total = sum(amounts)
    lines = "\n".join(
        f"{name:<12}{amt:>10.2f}{amt / total * 100:>8.1f}%"
        for name, amt in zip(items, amounts, strict=True)
    )
    return f"Monthly budget ({en_date(r)})\n\nCategory        Amount   Share\n{lines}\n{'Total':<12}{total:>10.2f}  100.0%"


# -- code -----------------------------------------------------------------------------------------

PY_FUNCS = [
    (
        "moving_average",
        "values: list[float], window: int",
        "list[float]",
        "滑动平均：返回每个窗口的平均值。",
        '    if window <= 0:\n        raise ValueError("window must be positive")\n    out = []\n    total = 0.0\n'
        "    for i, v in enumerate(values):\n        total += v\n        if i >= window:\n            total -= values[i - window]\n"
        "        if i >= window - 1:\n            out.append(total / window)\n    return out",
    ),
    (
        "word_counts",
        "text: str",
        "dict[str, int]",
        "Count how often each word occurs, ignoring case.",
        '    counts: dict[str, int] = {}\n    for word in text.lower().split():\n        word = word.strip(".,!?;:\\"\'()")\n'
        "        if word:\n            counts[word] = counts.get(word, 0) + 1\n    return counts",
    ),
    (
        "binary_search",
        "items: list[int], target: int",
        "int",
        "二分查找，找不到时返回 -1。",
        "    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if items[mid] == target:\n"
        "            return mid\n        if items[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1",
    ),
    (
        "chunked",
        "items: list[str], size: int",
        "list[list[str]]",
        "Split a list into chunks of at most `size` items.",
        "    return [items[i : i + size] for i in range(0, len(items), size)]",
    ),
    (
        "parse_duration",
        "text: str",
        "int",
        '把 "1h30m" 这样的时长解析为秒数。',
        '    units = {"h": 3600, "m": 60, "s": 1}\n    total, number = 0, ""\n    for ch in text:\n        if ch.isdigit():\n'
        '            number += ch\n        elif ch in units and number:\n            total += int(number) * units[ch]\n            number = ""\n'
        '        else:\n            raise ValueError(f"bad duration: {text!r}")\n    return total',
    ),
    (
        "is_palindrome",
        "s: str",
        "bool",
        "Check whether a string reads the same backwards, ignoring punctuation.",
        "    cleaned = [c.lower() for c in s if c.isalnum()]\n    return cleaned == cleaned[::-1]",
    ),
    (
        "merge_intervals",
        "intervals: list[tuple[int, int]]",
        "list[tuple[int, int]]",
        "合并重叠的区间。",
        "    result: list[tuple[int, int]] = []\n    for start, end in sorted(intervals):\n        if result and start <= result[-1][1]:\n"
        "            result[-1] = (result[-1][0], max(result[-1][1], end))\n        else:\n            result.append((start, end))\n    return result",
    ),
    (
        "fibonacci",
        "n: int",
        "list[int]",
        "Return the first n Fibonacci numbers.",
        "    seq = [0, 1]\n    while len(seq) < n:\n        seq.append(seq[-1] + seq[-2])\n    return seq[:n]",
    ),
]


def code_python(r: random.Random) -> str:
    name, args, ret, doc, body = r.choice(PY_FUNCS)
    prefix = r.choice(["", "util_", "calc_", "my_"])
    test_val = r.randint(2, 9)
    return (
        f"```python\nfrom __future__ import annotations\n\n\ndef {prefix}{name}({args}) -> {ret}:\n"
        f'    """{doc}"""\n{body}\n\n\nif __name__ == "__main__":\n'
        f"    # 简单测试 / quick check\n    print({prefix}{name}.__doc__)\n    print({test_val} * {test_val + 1})\n```"
    )


def code_sql(r: random.Random) -> str:
    table = r.choice(["orders", "users", "products", "payments", "shipments", "reviews"])
    col = r.choice(["created_at", "updated_at", "paid_at"])
    days = r.randint(7, 90)
    limit = r.choice([5, 10, 20, 50])
    return (
        f"-- 统计最近 {days} 天每个城市的订单数和平均金额\n```sql\nSELECT c.city,\n"
        f"       COUNT(*)             AS n_{table},\n       ROUND(AVG(t.amount), 2) AS avg_amount\n"
        f"FROM {table} AS t\nJOIN customers AS c ON c.id = t.customer_id\n"
        f"WHERE t.{col} >= CURRENT_DATE - INTERVAL '{days} days'\n  AND t.status <> 'cancelled'\n"
        f"GROUP BY c.city\nHAVING COUNT(*) > {r.randint(1, 20)}\nORDER BY n_{table} DESC\nLIMIT {limit};\n```"
    )


def code_js(r: random.Random) -> str:
    resource = r.choice(["users", "articles", "comments", "tasks", "invoices"])
    retries = r.randint(2, 5)
    return (
        f"```javascript\n// Fetch {resource} with retries and exponential backoff.\n"
        f"async function fetch{resource.capitalize()}(page = 1, retries = {retries}) {{\n"
        f"  for (let attempt = 0; attempt <= retries; attempt++) {{\n"
        f"    try {{\n      const res = await fetch(`/api/{resource}?page=${{page}}`);\n"
        f"      if (!res.ok) throw new Error(`HTTP ${{res.status}}`);\n      return await res.json();\n"
        f"    }} catch (err) {{\n      if (attempt === retries) throw err;\n"
        f"      await new Promise((r) => setTimeout(r, {r.choice([100, 200, 250, 500])} * 2 ** attempt));\n"
        f"    }}\n  }}\n}}\n```"
    )


def code_shell(r: random.Random) -> str:
    days = r.randint(3, 30)
    return (
        "```bash\n#!/usr/bin/env bash\n# 备份网站目录，并删除超过指定天数的旧备份\nset -euo pipefail\n\n"
        f"SRC=/var/www/{r.choice(['site', 'blog', 'shop', 'docs'])}\nDEST=/backup\nKEEP_DAYS={days}\n"
        'stamp=$(date +%Y%m%d-%H%M%S)\n\nmkdir -p "$DEST"\n'
        'tar -czf "$DEST/site-$stamp.tar.gz" -C "$SRC" .\n'
        'find "$DEST" -name \'site-*.tar.gz\' -mtime +"$KEEP_DAYS" -delete\n'
        'echo "backup written: $DEST/site-$stamp.tar.gz"\n```'
    )


def code_c(r: random.Random) -> str:
    n = r.choice([8, 16, 32, 64])
    return (
        "```c\n#include <stdio.h>\n#include <stddef.h>\n\n"
        f"/* Return the index of the largest element, or -1 for an empty array. */\n"
        "static long argmax(const double *x, size_t n) {\n    if (n == 0) return -1;\n    size_t best = 0;\n"
        "    for (size_t i = 1; i < n; i++) {\n        if (x[i] > x[best]) best = i;\n    }\n    return (long) best;\n}\n\n"
        f"int main(void) {{\n    double v[{n}];\n    for (int i = 0; i < {n}; i++) v[i] = (i * {r.randint(3, 17)}) % {r.randint(5, 29)};\n"
        f'    printf("argmax = %ld\\n", argmax(v, {n}));\n    return 0;\n}}\n```'
    )


def code_config(r: random.Random) -> str:
    port = r.choice([8000, 8080, 3000, 5000, 9090])
    workers = r.randint(2, 16)
    return (
        "```yaml\n# 服务配置 / service configuration\nserver:\n"
        f"  host: 0.0.0.0\n  port: {port}\n  workers: {workers}\n  timeout_seconds: {r.randint(10, 120)}\n"
        "database:\n"
        f"  url: postgresql://app@db:5432/{r.choice(['shop', 'crm', 'wiki', 'metrics'])}\n  pool_size: {workers * 2}\n"
        "logging:\n"
        f"  level: {r.choice(['info', 'warning', 'debug'])}\n  format: json\n```"
    )


# -- assembly -------------------------------------------------------------------------------------

# (generator, weight): roughly half Chinese, half English; prose, dialogue, instructions, news,
# numbers and code.
TEMPLATES: list[tuple[Callable[[random.Random], str], int]] = [
    (zh_news, 6), (zh_weather, 3), (zh_sports, 3), (zh_service_dialogue, 3), (zh_doctor_dialogue, 3),
    (zh_study_dialogue, 3), (zh_trip_dialogue, 3), (zh_instruction, 9), (zh_math_problem, 5),
    (zh_table, 3), (zh_prose_glue, 4),
    (en_news, 5), (en_weather, 3), (en_sports, 3), (en_service_dialogue, 3), (en_booking_dialogue, 2),
    (en_instruction, 7), (en_word_problem, 3), (en_table, 2),
    (code_python, 5), (code_sql, 3), (code_js, 3), (code_shell, 2), (code_c, 2), (code_config, 2),
]  # fmt: skip


def build(
    *, seed: int, target: int, part: int, exclude: set[str] | None = None
) -> tuple[str, Counter[str], set[str]]:
    """One corpus: its share of the hand-written material, then templated documents.

    ``exclude``: documents of the other corpus; a templated document equal to one is drawn again.
    """
    r = random.Random(seed)
    docs: list[tuple[str, str]] = []
    # part 0 (calibration) gets 4 of every 5 hand-written items, part 1 (evaluation) the 5th
    mine = (lambda i: i % 5 != 4) if part == 0 else (lambda i: i % 5 == 4)
    # translations: the evaluation text gets every third pair
    POOLS["translations"] = [t for i, t in enumerate(T.TRANSLATIONS) if (i % 3 == 2) == (part == 1)]
    POOLS["zh_qa"] = [qa for i, qa in enumerate(T.ZH_QA) if mine(i)]
    POOLS["en_qa"] = [qa for i, qa in enumerate(T.EN_QA) if mine(i)]
    docs += [("zh prose", p) for i, p in enumerate(T.ZH_PARAGRAPHS) if mine(i)]
    docs += [("en prose", p) for i, p in enumerate(T.EN_PARAGRAPHS) if mine(i)]
    docs += [("zh q&a", f"问：{q}\n答：{a}") for i, (q, a) in enumerate(T.ZH_QA) if mine(i)]
    docs += [("en q&a", f"Q: {q}\nA: {a}") for i, (q, a) in enumerate(T.EN_QA) if mine(i)]
    size = sum(len(d.encode()) + 2 for _, d in docs)
    gens, weights = zip(*TEMPLATES, strict=True)
    seen: set[str] = set()
    while size < target:
        gen = r.choices(gens, weights)[0]
        doc = gen(r)
        if doc in seen or (exclude is not None and doc in exclude):
            continue
        seen.add(doc)
        docs.append((gen.__name__, doc))
        size += len(doc.encode()) + 2
    r.shuffle(docs)
    kinds = Counter[str]()
    for kind, d in docs:
        kinds[kind] += len(d.encode())
    return "\n\n".join(d for _, d in docs) + "\n", kinds, {d for _, d in docs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare with the shipped files")
    ap.add_argument("--stats", action="store_true", help="print the composition")
    args = ap.parse_args()
    calib, calib_kinds, calib_docs = build(seed=20260501, target=CALIBRATION_BYTES, part=0)
    evalt, eval_kinds, _ = build(seed=20260502, target=EVALUATION_BYTES, part=1, exclude=calib_docs)
    if args.stats:
        for title, kinds, text in (
            ("calibration", calib_kinds, calib),
            ("eval", eval_kinds, evalt),
        ):
            total = sum(kinds.values())
            print(f"{title}: {len(text.encode()):,} bytes, {len(text):,} characters")
            for kind, n in kinds.most_common():
                print(f"  {kind:<22}{n / total * 100:5.1f}%")
    if args.check:
        ok = all(
            p.is_file() and p.read_text("utf-8") == t
            for p, t in ((CALIBRATION, calib), (EVALUATION, evalt))
        )
        print("up to date" if ok else "out of date: run python scripts/build_corpus.py")
        return 0 if ok else 1
    CALIBRATION.write_text(calib, encoding="utf-8")
    EVALUATION.write_text(evalt, encoding="utf-8")
    print(
        f"wrote {CALIBRATION} ({len(calib.encode()):,} bytes) and {EVALUATION} ({len(evalt.encode()):,} bytes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
