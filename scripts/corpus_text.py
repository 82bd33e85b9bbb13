# ruff: noqa: E501 - long literal text lines are the point of this file
"""Hand-written material for the calibration and evaluation corpora (see build_corpus.py).

Everything here was written for llama3zh-local; nothing is copied from a data set. Paragraphs
are split between the two corpora by build_corpus.py, never shared.
"""

from __future__ import annotations

# -- Chinese prose: news-like, essays, technical explanations, how-tos ------------------------------

ZH_PARAGRAPHS = [
    "城市的早晨总是从声音开始的。天还没亮，环卫工人的扫帚已经在街道上划出有节奏的沙沙声；六点刚过，早餐铺的蒸笼掀开，白气扑上玻璃窗；七点以后，公交车报站、电动车的喇叭和孩子们背着书包的脚步声混在一起。很多人说大城市冷漠，可是如果你在同一家店连续买一个月的豆浆，老板会记得你不要糖，也会在下雨天提醒你带伞。",
    "所谓“复利”，并不只是理财里的概念。一个人每天多读十页书，一年就是三千多页，大约相当于十几本中等篇幅的书；更重要的是，读过的内容会互相连接，让后来读到的东西更容易理解。学习一门外语、练习一种乐器、维护一段关系，都有类似的规律：前期进展很慢，但只要方向正确并且坚持下去，积累会在某个时刻突然显现出来。",
    "在分布式系统中，“一致性”这个词经常引起误解。数据库事务里的一致性，指的是事务前后数据都满足预先定义的约束；而 CAP 定理中的一致性，指的是所有节点在同一时刻看到相同的数据。工程实践中，很多系统选择最终一致性：写入先在一个节点成功，再异步复制到其他节点，短时间内不同节点可能读到不同的结果，但在没有新写入的情况下，它们最终会收敛到同一个值。",
    "做红烧肉的关键在于火候和耐心。五花肉切成三厘米见方的块，冷水下锅焯水，撇去浮沫后捞出沥干。锅里放少量油，小火把冰糖炒到枣红色，再把肉块倒进去翻炒上色。接着加入姜片、葱段、八角和一小段桂皮，沿锅边淋入料酒和生抽，倒入没过肉块的热水，大火烧开后转小火炖一个小时。最后开大火收汁，汤汁浓稠发亮时就可以出锅了。",
    "近年来，越来越多的县城出现了独立书店。它们的面积往往不大，却会精心挑选书目，举办读书会、手工课和小型展览。书店老板坦言，单靠卖书很难盈利，咖啡、文创和活动收入占了相当大的比例。但他们也发现，本地读者对这样的空间有真实的需求：学生放学后来写作业，退休的老人来看报纸，年轻的父母带着孩子来参加绘本活动。",
    "机器学习模型的“过拟合”，可以用一个简单的比喻来理解：一个学生把历年考试题的答案全部背了下来，在做旧题时得分很高，遇到新题却束手无策。模型在训练集上表现很好、在验证集上表现很差，通常说明它记住了训练数据中的噪声而不是规律。常见的缓解办法包括增加数据量、使用正则化、提前停止训练，以及通过交叉验证来挑选超参数。",
    "春节前的火车站永远是最热闹的地方。拖着行李箱的年轻人、扛着编织袋的务工者、抱着孩子的夫妻，都在同一块电子屏前寻找自己的车次。有人提前一个月抢票，有人选择拼车或者自驾，还有人干脆把父母接到自己工作的城市过年。形式在变，回家的心情却和几十年前没有什么不同。",
    "量化是把模型权重从高精度数值转换成低精度数值的过程。以四比特量化为例，原本每个权重需要十六比特来存储，现在只需要四比特，再加上每个分组共享的缩放系数，模型体积大约可以缩小到原来的三分之一到四分之一。代价是精度损失：数值被映射到有限的几个等级上，误差会在每一层中累积。重要性矩阵的作用，是告诉量化算法哪些输入通道对输出影响更大，从而在这些位置上尽量保留精度。",
    "这家社区医院的全科门诊每天接待两百多位患者，其中一半以上是慢性病复诊。医生说，高血压和糖尿病患者最需要的不是昂贵的药物，而是规律的随访和生活方式的调整。为此，医院建立了签约家庭医生制度，患者可以通过手机预约、查看检验报告，并在指定时间接到护士的电话提醒。",
    "写技术文档时，最常见的问题不是写得太少，而是没有站在读者的角度。一篇好的安装说明应该先告诉读者需要准备什么环境，再按步骤列出命令，并说明每一步成功后应该看到什么输出。遇到可能出错的地方，要把错误信息原样写出来，并给出解决办法。很多人跳过文档直接运行命令，所以最关键的提示应该放在最前面。",
    "黄河在中国文化中有着特殊的地位。它发源于青藏高原，流经九个省区，最后注入渤海，全长约五千四百多公里。黄河中游穿过黄土高原，携带了大量泥沙，使下游河床不断抬高，形成了著名的“地上河”。历史上黄河多次改道，给沿岸人民带来过巨大的灾难，也孕育了灿烂的古代文明。",
    "团队协作中，一个容易被忽视的环节是代码评审。评审的目的并不是挑错，而是让至少两个人理解每一段代码为什么这样写。好的评审意见会说明原因，例如“这里如果列表为空会抛出异常，建议提前返回”，而不是简单地写“这样不好”。被评审的人也应该把改动拆小，一次提交只做一件事，这样评审者才能在合理的时间里认真看完。",
    "今年夏天，南方多地出现持续高温天气，部分地区最高气温超过四十摄氏度。气象专家提醒，高温天气下应尽量避免在中午前后进行户外活动，外出时注意防晒和补水；老人、儿童和患有心脑血管疾病的人群要格外小心。电力部门也表示，用电负荷连创新高，将通过错峰用电等措施保障居民生活用电。",
    "学习编程的初学者常常问：应该先学哪一门语言？其实，第一门语言最重要的作用是帮助你建立编程思维：变量、条件、循环、函数和数据结构。Python 语法简洁，资料丰富，适合入门；如果你对网页开发感兴趣，也可以从 JavaScript 开始。比选择语言更重要的，是尽快动手写一个自己真正想用的小程序，在解决具体问题的过程中学习。",
    "茶在中国已有几千年的历史。按照加工方式的不同，茶叶大致可以分为绿茶、白茶、黄茶、青茶、红茶和黑茶六大类。绿茶不发酵，保留了较多的茶多酚，口感清爽；红茶是全发酵茶，汤色红亮，滋味醇厚；乌龙茶属于半发酵茶，香气馥郁。泡茶的水温也很讲究，细嫩的绿茶一般用八十度左右的水，而乌龙茶和普洱茶则适合用沸水冲泡。",
    "数据备份有一个被广泛推荐的“三二一”原则：至少保留三份数据，存放在两种不同的介质上，其中一份放在异地。很多人以为把文件同步到云盘就等于备份，但同步会把误删除和勒索软件加密后的文件也一起同步过去。真正的备份需要保留历史版本，并且定期做恢复演练，确认在需要的时候真的能把数据找回来。",
    "在乡村振兴的过程中，一些村庄开始尝试把传统手艺和电子商务结合起来。竹编、蜡染、刺绣这些过去只在集市上出售的手工艺品，如今通过直播和网店卖到了全国各地。村里的年轻人负责拍摄和运营，老手艺人负责制作和讲解，订单多的时候，整个村子都忙碌起来。",
    "大语言模型生成文本时，每一步都会根据已经生成的内容预测下一个词元的概率分布，然后从中采样。温度参数控制分布的平滑程度：温度越低，模型越倾向于选择概率最高的词元，输出更稳定；温度越高，输出更多样，但也更容易出现不合逻辑的内容。top-p 采样则只在累计概率达到某个阈值的候选词元中进行选择，可以避免选到概率极低的词元。",
    "我家楼下有一棵很老的梧桐树，据说是上世纪五十年代种下的。夏天它的树冠几乎遮住了半条街，附近的老人们喜欢搬着小板凳在树下下棋、聊天。秋天落叶的时候，环卫工人每天要扫好几遍，孩子们却最喜欢踩在厚厚的落叶上，听它们发出清脆的响声。",
    "职场新人写邮件时，可以记住几个要点：主题要具体，比如“关于周五发布会场地的确认”；正文第一句话就说明目的；需要对方做什么、在什么时间之前完成，要写清楚；附件要在正文中提及；结尾简单致谢即可。发送之前再检查一遍收件人，尤其是在回复全部的时候。",
    "地铁线路图是一种典型的示意图。它并不按照真实的地理比例绘制，而是把线路简化成水平、垂直和四十五度角的线段，把站点之间的距离画得大致相等。这种设计牺牲了地理上的准确性，却让乘客能够一眼看清换乘关系。第一张这样的线路图据说出自一位电气工程师之手，他借鉴了电路图的画法。",
    "面对突如其来的暴雨，城市排水系统往往承受着巨大压力。专家指出，传统的做法是不断加大管道口径，而“海绵城市”的思路是让城市像海绵一样吸水、蓄水和渗水：通过透水铺装、下沉式绿地、雨水花园和调蓄池等设施，把雨水留在原地或者延缓它进入管网的时间，从而减轻内涝风险。",
    "如果你第一次去西北旅行，建议把行程安排得松一些。那里的景点之间距离很远，从一个地方到另一个地方常常要开好几个小时的车。高原地区紫外线强，早晚温差大，即使在夏天也要带一件厚外套。当地的面食非常丰富，拉面、揪面片、臊子面各有特色，不妨每天换一种尝尝。",
    "操作系统中的进程和线程是两个容易混淆的概念。进程是资源分配的基本单位，每个进程都有独立的地址空间；线程是调度的基本单位，同一个进程中的多个线程共享内存和文件句柄。正因为共享内存，线程之间通信的成本很低，但也带来了竞争条件的问题，需要使用互斥锁、信号量或者原子操作来保护共享数据。",
    "小区里新开了一家修车铺，老板是一位五十多岁的师傅，手艺很好，收费也公道。换一个内胎二十五元，补胎十元，链条上油不收钱。他说自己年轻时在工厂里做钳工，后来工厂改制，就出来自己干。问他辛苦不辛苦，他笑着说：“有活干就不辛苦，闲着才难受。”",
    "关于睡眠，有几个常见的误区。第一，周末补觉并不能完全抵消工作日的睡眠不足；第二，喝酒可能让人更快入睡，但会降低后半夜的睡眠质量；第三，睡前长时间看手机，屏幕的光线和内容带来的兴奋都会推迟入睡时间。比较好的做法是固定起床时间，白天适当运动，晚上给自己留出半小时不看屏幕的放松时间。",
    "在软件项目中，估算工期几乎总是偏乐观的。原因之一是人们只估算了写代码的时间，却忽略了沟通、调试、测试、部署以及各种意外。一个实用的办法是把任务拆到每项不超过一两天，对每一项分别估算，再留出百分之二十到三十的缓冲。对于从来没有做过的事情，最好先花一点时间做技术验证，再给出正式的估算。",
    "这座古镇坐落在江南水网之间，石板路、小石桥和临水而建的民居构成了典型的水乡风貌。清晨，船娘摇着乌篷船穿过狭窄的河道，河边的阿婆在石阶上淘米洗菜。随着旅游业的发展，古镇里开了许多客栈和咖啡馆，但在游客散去的傍晚，仍然能听到老人们用方言聊天的声音。",
    "向量数据库近来受到很多关注。它的核心功能是存储高维向量，并快速找出与查询向量最相似的若干个结果。由于在高维空间中精确搜索的代价很高，这类系统通常使用近似最近邻算法，比如基于图的 HNSW 或者基于量化的 IVF-PQ，用少量的精度损失换取数量级的速度提升。检索增强生成就是把这种检索能力和大语言模型结合起来的一种方法。",
    "孩子学骑自行车的那个下午，我才意识到，放手比扶着更难。一开始我一直抓着后座，他骑得歪歪扭扭，却很安心；后来我悄悄松开手，跟在后面小跑，他骑出去十几米才发现我不在身边，先是一愣，接着大声喊：“我会骑了！”那一刻，他的兴奋和我的失落同时到来。",
    "某市统计局发布的数据显示，上半年全市社会消费品零售总额同比增长百分之六点八，其中餐饮收入增长明显，旅游、文化和体育相关消费也保持较快增长。与此同时，网上零售额占比继续提高，即时配送和社区团购成为新的增长点。分析人士认为，消费市场的恢复仍需要稳定就业和增加居民收入的政策支持。",
    "图书馆的分类法看似枯燥，其实体现了一种认识世界的方式。中国的图书馆大多采用《中国图书馆分类法》，用二十二个基本大类来组织知识，例如 A 代表马克思主义、列宁主义、毛泽东思想、邓小平理论，I 代表文学，T 代表工业技术。每一本书的索书号，就是它在这张知识地图上的坐标。",
    "调试程序时，最有效的方法往往不是盯着代码苦思冥想，而是缩小问题范围。先找到一个能稳定复现问题的最小输入，再通过二分的方式注释掉一半代码或者回退一半提交，看问题是否仍然存在。记录每一次尝试和结果，也能避免在同一个错误的方向上反复打转。很多棘手的问题，在你把它讲给别人听的过程中就找到了答案。",
    "深秋的山里，层林尽染。枫叶红了，银杏黄了，松柏依旧苍翠。沿着石阶往上走，空气中有松针和泥土的气味，偶尔能听到山涧的流水声和远处寺院的钟声。登上山顶时正赶上日落，云海在脚下翻涌，远处的山峦像一幅层次分明的水墨画。",
    "家庭理财的第一步是弄清楚钱花到了哪里。可以用一个月的时间记录每一笔支出，然后按照住房、饮食、交通、教育、医疗、娱乐等类别进行汇总。很多人会惊讶地发现，外卖、订阅服务和冲动消费占了不小的比例。在此基础上，再设定一个切实可行的储蓄目标，并为突发情况准备三到六个月生活费的应急资金。",
    "光伏发电的原理是光生伏特效应：当光照射到半导体材料上时，光子的能量使电子跃迁，在 PN 结内建电场的作用下形成电流。过去十年间，光伏组件的价格下降了百分之八十以上，转换效率则不断提高。如今，在许多光照资源丰富的地区，光伏发电的成本已经低于燃煤发电，但如何解决间歇性问题、配套建设储能设施，仍然是行业面临的挑战。",
    "外婆的厨房很小，只有一个灶台和一张旧木桌，却是我童年记忆里最温暖的地方。她做的糯米圆子软糯香甜，腌的咸菜脆爽可口，每到冬至，还会包一大锅荠菜馅的饺子。后来外婆老了，手抖得拿不稳菜刀，就坐在一旁指挥我们做，嘴里念叨着：“盐少放一点，火小一点，不要着急。”",
    "网络安全中有一个基本原则叫“最小权限”，意思是每个用户、每个程序只获得完成其任务所必需的权限。比如，一个只需要读取数据的报表服务，不应该拥有删除数据库表的权限；一个普通员工的账号，不应该能够安装软件。这样即使某个账号被攻破，攻击者能够造成的破坏也会被限制在较小的范围内。",
    "志愿者小周每个周六都会去养老院陪老人们聊天。她说，一开始不知道该说什么，后来发现老人们最喜欢讲自己年轻时的故事：在工厂里当劳模、下乡插队、第一次坐火车去北京。她把这些故事整理成文字，配上老照片，做成了一本小册子，送给每一位讲述者。",
    "标准化考试的分数并不能完全反映一个人的能力，但它提供了一把相对统一的尺子。问题在于，当分数成为唯一的目标，教学就容易变成应试训练，学生花大量时间重复做题，而缺少阅读、实践和思考的机会。越来越多的学校开始探索综合评价，把课堂表现、项目作品和社会实践也纳入考核。",
]

# -- English prose ------------------------------------------------------------------------------

EN_PARAGRAPHS = [
    "The harbor town wakes up slowly. Fishing boats come in before sunrise, and by seven the market is loud with prices being shouted over crates of mackerel and crab. Tourists arrive later, looking for coffee and the ferry schedule, while the fishermen are already mending nets and talking about the weather for tomorrow.",
    'A good commit message answers two questions: what changed, and why. The first line should be a short summary in the imperative mood, such as "Fix crash when the config file is empty". After a blank line, the body explains the reasoning, mentions alternatives that were considered, and links to the issue. Future readers, including yourself six months from now, will thank you.',
    "Inflation measures how quickly the general level of prices rises. If a basket of groceries cost 100 dollars last year and costs 104 dollars today, annual inflation for that basket is four percent. Central banks usually aim for low and stable inflation, often around two percent, and raise interest rates when prices climb too fast, which makes borrowing more expensive and cools demand.",
    "To repot a houseplant, choose a pot one size larger than the current one, with a drainage hole. Water the plant a day before so the root ball holds together. Tip the pot sideways, ease the plant out, and loosen any roots that circle the bottom. Add fresh potting mix, set the plant at the same depth as before, fill around it, and water thoroughly.",
    "Caching is one of the oldest tricks in computing: keep a copy of expensive results close to where they are needed. The hard part is invalidation, deciding when a cached copy no longer reflects the truth. Time-based expiry is simple but may serve stale data; explicit invalidation is precise but easy to get wrong when many services write to the same data.",
    "The city council voted on Tuesday to extend the bike lane network by twelve kilometers over the next two years. Supporters said the plan would make commuting safer and reduce traffic, while several shop owners on Market Street worried about losing parking spaces. The first segment, connecting the train station to the university, is expected to open next spring.",
    "Learning a language as an adult is less about talent than about routine. Fifteen minutes a day beats two hours once a week, because memory consolidates between sessions. Listening to slow podcasts, reading graded readers, and speaking with a patient partner all help. Most importantly, accept that you will make mistakes in public, and that this is how progress sounds.",
    "A hash table stores key-value pairs in an array, using a hash function to turn each key into an index. When two keys land on the same index, a collision occurs; it can be resolved by chaining, where each slot holds a small list, or by open addressing, where the table probes for the next free slot. With a good hash function and a reasonable load factor, lookups take constant time on average.",
    'My grandfather kept a notebook of every tree he planted. Each entry had a date, the species, and a short note: "apple, near the fence, for Anna\'s birthday" or "walnut, replacing the one lost in the storm". When he died, the orchard behind the house was full of trees with stories, and the notebook became a kind of map of his life.',
    "Researchers reported this week that a new battery chemistry retained more than ninety percent of its capacity after three thousand charge cycles in laboratory tests. The cells use an iron-based cathode and avoid cobalt entirely, which could lower costs and ease supply concerns. The team cautioned that scaling up production will take several years and that real-world performance may differ.",
    "When you write a function, imagine the person who will call it. Give it a name that says what it returns or does, keep the number of parameters small, and make invalid states hard to express. If the function can fail, decide whether to return an error value or raise an exception, and document that choice. Short functions with one responsibility are easier to test and to reuse.",
    "The museum's new exhibition brings together more than two hundred maps drawn between the fifteenth and nineteenth centuries. Some are beautifully precise, others wildly wrong, showing California as an island or placing mountains where none exist. Together they tell the story of how people imagined the world before satellites, and how knowledge spread through trade, war, and curiosity.",
    "A simple way to improve your sleep is to keep a consistent wake-up time, even on weekends. Get some daylight in the morning, avoid caffeine after lunch, and keep the bedroom cool and dark. If you cannot fall asleep after twenty minutes, get up and do something quiet in dim light until you feel sleepy again, rather than lying in bed worrying.",
    "Version control lets a team work on the same code without overwriting each other's changes. Each developer works on a branch, and changes are merged back after review. Conflicts happen when two people edit the same lines; resolving them means reading both versions, understanding the intent, and producing a result that keeps both. Small, frequent merges make conflicts rarer and easier.",
    "The storm reached the coast shortly after midnight, bringing winds of up to 130 kilometers per hour and heavy rain. Power was cut to about forty thousand homes, and several roads were closed because of fallen trees. Emergency services reported no serious injuries. Officials urged residents to stay indoors until the morning and to avoid flooded streets.",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells, chlorophyll absorbs mostly red and blue light, which drives reactions that split water, release oxygen, and produce energy carriers. These carriers then power the Calvin cycle, where carbon dioxide from the air is fixed into sugars that the plant uses to grow.",
    "The interview went better than I expected. The panel asked about a project that failed, and instead of hiding it I explained what went wrong, what I would do differently, and what I learned about asking for help earlier. One of them nodded and said that was the most honest answer they had heard all week.",
    "Floating-point numbers cannot represent most decimal fractions exactly. In binary, one tenth is a repeating fraction, so adding 0.1 ten times may not give exactly 1.0. For money, use integer cents or a decimal type. When comparing floating-point results, compare against a small tolerance rather than testing for exact equality.",
    "On the first warm Saturday of the year, the park fills up by ten in the morning. Families spread blankets on the grass, teenagers play football with jackets as goalposts, and an old man sells lemonade from a cart he has pushed to the same corner for twenty years. By evening the light turns golden and the crowd thins, leaving only joggers and the sound of birds.",
    "Container images package an application together with its dependencies, so it runs the same way on a laptop and in production. Each instruction in a build file creates a layer, and layers are cached, which is why the order of instructions matters: copy the dependency list and install packages before copying the source code, so that editing one file does not force a full reinstall.",
    "The library's reading program for children has grown from twelve participants to more than three hundred in five years. Volunteers read aloud every Wednesday afternoon, and children earn a stamp for each book they finish. Librarians say the most popular titles are still the ones about animals, though graphic novels have been catching up quickly.",
    "Regular expressions are powerful but easy to misuse. A pattern that works on ten test strings may take exponential time on an unlucky input if it contains nested quantifiers. Keep patterns simple, anchor them when you can, and prefer a real parser for structured formats such as JSON, HTML, or programming languages.",
    "Every autumn the village holds a harvest fair. Farmers bring their largest pumpkins to be weighed, the school choir sings in the church square, and there is a competition for the best apple pie. Last year the winning pumpkin weighed 412 kilograms and had to be lifted onto the scale with a forklift borrowed from the hardware store.",
    "Unit tests check small pieces of code in isolation; integration tests check that pieces work together. A healthy project has many fast unit tests and fewer, slower integration tests that cover the most important paths. Tests that depend on the network or on the current time tend to be flaky, so replace those dependencies with fakes or fixed values.",
    "The price of a cup of coffee hides a long supply chain. Beans are grown on small farms in tropical highlands, picked by hand, processed, dried, sorted, shipped across oceans, roasted, and finally brewed. Farmers often receive only a small share of the final price, which is why some roasters now buy directly from cooperatives and publish what they pay.",
    "Attention mechanisms let a model weigh different parts of its input when producing each output. In a transformer, every token computes a query, a key, and a value; the similarity between one token's query and the other tokens' keys decides how much of each value flows into the result. Stacking many such layers lets the model build rich representations of context.",
    "We missed the last bus and decided to walk back to the hostel. It was nearly two hours along a quiet road lined with olive trees, under more stars than any of us had seen in years. Our feet hurt, someone started singing badly, and by the time we arrived we agreed it had been the best part of the trip.",
    "Public health experts recommend washing hands with soap for at least twenty seconds, especially before eating and after using the bathroom. Soap works by breaking apart the fatty membranes of many viruses and lifting dirt and microbes off the skin so they can be rinsed away. Hand sanitizer with enough alcohol is a good option when soap and water are not available.",
    "A database index is like the index at the back of a book: instead of scanning every page, you look up the term and jump to the right place. Indexes make reads faster but writes slower, because every insert or update must also update the index. Choose indexes based on the queries your application actually runs, and check query plans to confirm they are used.",
    "The orchestra's new conductor is thirty-four, the youngest in its history. In her first season she has programmed works by living composers alongside Beethoven and Brahms, started free lunchtime concerts for office workers, and invited local schools to open rehearsals. Ticket sales are up eleven percent compared with last year.",
    'Good error messages say what went wrong, why, and what to do next. "File not found" is less helpful than "config.yaml not found in /etc/app; create it or pass --config PATH". Include the values that caused the problem, avoid blaming the user, and make sure the message is visible where the user is looking, not buried in a log file.',
    "Composting turns kitchen scraps and garden waste into rich soil. Mix green materials, such as vegetable peels and grass clippings, with brown materials, such as dry leaves and cardboard, in roughly equal volumes. Keep the pile as moist as a wrung-out sponge and turn it every week or two to add air. In a few months, you will have dark, crumbly compost.",
    "The train from the capital to the mountains takes just under five hours, and the last stretch is the most beautiful. The tracks climb through tunnels and over stone bridges, past waterfalls and small stations where the only passenger is a farmer with a basket of eggs. In winter the line is sometimes closed for days by snow.",
    "Backpressure is how a system tells a fast producer to slow down. Without it, a queue between a producer and a slow consumer grows until memory runs out. Bounded queues, rate limits, and explicit acknowledgements are common ways to apply backpressure, so that overload leads to slower responses or rejected requests instead of a crash.",
    "Her bakery opens at six, but she starts at three. The sourdough has been fermenting overnight; she shapes the loaves, scores them with a razor, and slides them into the oven while the croissant dough rests in the fridge. By the time the first customers arrive, the shelves are full and the windows are fogged with steam.",
    "Electric vehicles are more efficient than combustion cars because electric motors convert most of their energy into motion, while engines lose much of it as heat. Their environmental benefit depends on how the electricity is produced and on the emissions from making the battery. Over a typical lifetime, studies find lower total emissions in most regions, and the gap widens as grids get cleaner.",
    "Pair programming can feel slow at first: two people, one keyboard. But the driver writes code while the navigator thinks about the bigger picture, spots mistakes early, and asks questions that lead to simpler designs. Teams that pair regularly often find that knowledge spreads faster and that fewer bugs reach production.",
    "The river flooded twice this spring, and the town has started planning how to live with water instead of only fighting it. Proposals include turning low-lying parks into areas that can safely flood, raising the foundations of new buildings, and restoring wetlands upstream that once absorbed heavy rain.",
    "If a program is slow, measure before changing anything. A profiler shows where time is actually spent, and the answer is often surprising: a single query inside a loop, a log statement that formats a huge object, or a data structure with the wrong complexity. Fix the biggest cost first, measure again, and stop when the program is fast enough.",
    "Writing by hand has become rare, yet many people still keep a paper diary. They say it slows them down in a useful way: there is no delete key, no notifications, and no temptation to switch to something else. Reading old entries years later, they find not only what happened but how they felt about it at the time.",
]

# -- question / answer pairs (knowledge, advice, explanation) ----------------------------------------

ZH_QA = [
    (
        "为什么天空是蓝色的？",
        "阳光由不同波长的光组成。当它穿过大气层时，会被空气分子散射，而波长较短的蓝光比波长较长的红光散射得更强烈，这种现象叫做瑞利散射。被散射的蓝光从天空的各个方向进入我们的眼睛，所以天空看起来是蓝色的。日出和日落时，阳光要穿过更厚的大气层，蓝光大部分被散射掉了，剩下的红光和橙光使天空呈现出红色。",
    ),
    (
        "如何提高自己的写作能力？",
        "可以从三个方面入手：第一，多读好文章，注意作者是如何开头、组织段落和过渡的；第二，坚持写，哪怕每天只写三百字，也比偶尔写一篇长文更有效；第三，写完后隔一段时间再修改，把多余的词删掉，把模糊的句子改得具体。如果有机会，请别人读一读你的文章并给出意见。",
    ),
    (
        "什么是通货膨胀？它对普通人有什么影响？",
        "通货膨胀是指一段时间内物价总体水平持续上涨、货币购买力下降的现象。对普通人来说，同样的钱能买到的东西变少了；如果工资增长跟不上物价上涨，实际生活水平就会下降。存款的实际价值也会被侵蚀，因此人们会考虑通过合理的投资来保值，但同时也要注意风险。",
    ),
    (
        "Python 中列表和元组有什么区别？",
        "列表（list）是可变的，可以添加、删除和修改元素，用方括号表示；元组（tuple）是不可变的，创建后不能修改，用圆括号表示。因为不可变，元组可以作为字典的键，也更适合表示一组固定的数据，比如坐标 (x, y)。在性能上，元组的创建和访问通常比列表稍快一些，占用的内存也更少。",
    ),
    (
        "长时间使用电脑，怎样保护眼睛？",
        "可以遵循“二十、二十、二十”法则：每使用屏幕二十分钟，就看向二十英尺（约六米）以外的地方二十秒。同时，把屏幕亮度调整到与环境光相近，屏幕顶端略低于视线，距离眼睛五十到七十厘米。有意识地多眨眼，保持室内空气湿润，也能缓解眼睛干涩。如果不适持续存在，应及时就医检查。",
    ),
    (
        "请解释一下什么是区块链。",
        "区块链是一种分布式账本技术。交易记录被打包成一个个“区块”，每个区块都包含前一个区块的哈希值，从而按时间顺序连接成链。因为账本由网络中的许多节点共同保存，并通过共识机制决定哪些新区块被接受，所以单个节点很难篡改历史记录。区块链最著名的应用是加密货币，也被尝试用于供应链溯源和数字身份等领域。",
    ),
    (
        "如何判断一条网络信息是否可靠？",
        "首先看来源：是权威机构、正规媒体，还是无法核实的个人账号；其次看时间：是否是旧闻被重新传播；再次看证据：有没有具体的数据、原始文件或多方信源的印证。对于情绪化、标题夸张、要求“赶紧转发”的内容要格外警惕。必要时可以通过搜索引擎查找原始出处，或者查看专业的辟谣平台。",
    ),
    (
        "做饭时油锅着火了该怎么办？",
        "千万不要用水浇，因为水遇到高温油会迅速汽化，把燃烧的油溅出来，使火势扩大。正确的做法是立即关闭燃气或电源，用锅盖盖住锅口隔绝空气；也可以把切好的蔬菜倒入锅中降温。如果家里有灭火毯，可以用它覆盖。火势无法控制时，要迅速离开并拨打火警电话一一九。",
    ),
    (
        "HTTP 和 HTTPS 有什么区别？",
        "HTTP 是超文本传输协议，数据以明文形式传输，容易被窃听或篡改。HTTPS 在 HTTP 的基础上加入了 TLS 加密层：浏览器和服务器先通过证书验证服务器的身份，再协商出会话密钥，之后的通信内容都经过加密。因此 HTTPS 能够保护登录密码、支付信息等敏感数据，现在绝大多数网站都已经默认使用 HTTPS。",
    ),
    (
        "孩子不爱读书怎么办？",
        "可以先从孩子感兴趣的主题入手，比如恐龙、太空、动物或者漫画，让阅读和兴趣联系起来。家长自己也要读书，孩子更容易模仿身边人的行为。每天固定一个短暂的亲子阅读时间，读完后聊一聊故事里的人物和情节，而不是要求孩子写读后感。家里多放一些书，让孩子随手就能拿到。",
    ),
    (
        "什么是机器学习中的梯度下降？",
        "梯度下降是一种寻找函数最小值的迭代方法。在训练模型时，我们定义一个损失函数来衡量预测值与真实值的差距，然后计算损失函数对每个参数的梯度，也就是参数变化时损失变化的方向和速度。每一步都沿着梯度的反方向更新参数，步长由学习率控制。学习率太大可能来回震荡甚至发散，太小则收敛很慢。",
    ),
    (
        "第一次养猫需要准备什么？",
        "基本用品包括猫粮、食盆和水盆、猫砂和猫砂盆、猫抓板、航空箱以及几件玩具。接猫回家前，最好先了解它之前吃的猫粮品牌，逐步过渡，避免肠胃不适。到家后给它一个安静的角落适应环境，不要急着抱它。之后要按时带它去宠物医院接种疫苗、驱虫，并考虑绝育。",
    ),
    (
        "如何制定一个可行的健身计划？",
        "先明确目标，是减脂、增肌还是提高体能。初学者可以每周安排三次训练，每次四十五分钟到一小时，包括热身、力量训练和拉伸；另外安排一到两次中等强度的有氧运动。动作标准比重量更重要，可以先请教练指导。饮食上保证足够的蛋白质，睡眠充足。每四到六周评估一次进展，再调整计划。",
    ),
    (
        "为什么说“早睡早起”对身体好？",
        "人体有自己的生物钟，激素分泌、体温和代谢都有昼夜节律。规律的作息能让这些节律保持稳定：晚上褪黑素分泌增加，帮助入睡；早晨皮质醇升高，让人清醒。长期熬夜或作息混乱，会打乱生物钟，增加肥胖、心血管疾病和情绪问题的风险。当然，比起几点睡，更重要的是睡眠时间充足、作息规律。",
    ),
]

EN_QA = [
    (
        "Why do we have seasons?",
        "Seasons happen because Earth's axis is tilted by about 23.5 degrees relative to its orbit around the Sun. For part of the year, the Northern Hemisphere leans toward the Sun, receiving more direct sunlight and longer days, which brings summer there and winter in the Southern Hemisphere. Six months later the situation is reversed. The distance to the Sun changes slightly during the year, but that is not the main cause.",
    ),
    (
        "What is the difference between a process and a thread?",
        "A process is an independent program in execution with its own memory space. A thread is a unit of execution inside a process; threads of the same process share memory and open files. Creating and switching between threads is cheaper than between processes, and threads can communicate through shared memory, but that sharing requires synchronization to avoid race conditions.",
    ),
    (
        "How can I save money on groceries?",
        "Plan meals for the week and shop with a list, so you buy only what you need. Compare unit prices rather than package prices, buy staples like rice, beans, and oats in bulk, and choose seasonal produce. Cook in larger batches and freeze portions. Finally, check what you already have before shopping, since forgotten food at the back of the fridge is money wasted.",
    ),
    (
        "What does an API do?",
        "An API, or application programming interface, is a contract that lets one piece of software use another. It defines which requests can be made, what data they need, and what they return. For example, a weather service might offer an API where your app sends a city name and receives the forecast as structured data, without knowing anything about how the service computes it.",
    ),
    (
        "How do vaccines work?",
        "Vaccines train the immune system to recognize a pathogen without causing the disease. They contain a harmless piece or version of the virus or bacterium, or instructions for making one of its proteins. The immune system responds by producing antibodies and memory cells. If the real pathogen appears later, the body recognizes it quickly and can fight it off before it causes serious illness.",
    ),
    (
        "What is a good way to prepare for a job interview?",
        "Research the company and the role, and think about how your experience matches what they need. Prepare short stories that show how you solved problems, worked with others, and learned from mistakes, using a simple structure: situation, action, result. Practice answering out loud, prepare a few questions of your own, and check the logistics, such as the time, place, or video link, the day before.",
    ),
    (
        "Why is the ocean salty?",
        "Rain is slightly acidic, and as it falls on land it slowly dissolves minerals from rocks. Rivers carry these dissolved salts to the ocean. When ocean water evaporates, the water leaves but the salts stay behind, so over millions of years salt has accumulated. Hydrothermal vents on the sea floor also add minerals. Today, the average salinity is about 35 grams of salt per liter.",
    ),
    (
        "What is recursion in programming?",
        "Recursion is when a function calls itself to solve a smaller instance of the same problem. Every recursive function needs a base case that stops the recursion, and each call must move closer to that base case. Computing a factorial is the classic example: the factorial of n is n times the factorial of n minus one, and the factorial of zero is one.",
    ),
    (
        "How can I get better at public speaking?",
        "Start by knowing your message: if you can state your main point in one sentence, the rest of the talk can be built around it. Practice out loud several times, ideally in front of a friend or a camera. Slow down, pause after important points, and look at individual people rather than the whole room. Nervousness is normal; most audiences notice it far less than you think.",
    ),
    (
        "What causes a rainbow?",
        "A rainbow appears when sunlight enters raindrops, bends, reflects off the inside of the drop, and bends again as it leaves. Because different colors bend by slightly different amounts, the white light spreads into a spectrum. You see a rainbow when the Sun is behind you and the rain is in front of you, at an angle of about 42 degrees from the point directly opposite the Sun.",
    ),
    (
        "Is it better to rent or buy a home?",
        "It depends on how long you plan to stay, local prices, interest rates, and your savings. Buying builds equity and gives stability, but it comes with large upfront costs, maintenance, and less flexibility. Renting costs less upfront and lets you move easily, and the money not spent on a down payment can be invested. A common rule of thumb is that buying makes more sense if you will stay at least five to seven years.",
    ),
    (
        "What is the purpose of a unit test?",
        "A unit test checks that a small piece of code, such as a function, behaves as expected for given inputs. Good unit tests are fast, independent of each other, and deterministic. They catch regressions when the code changes, document how the code is supposed to be used, and make refactoring safer, because you can change the implementation and immediately see whether the behavior stayed the same.",
    ),
    (
        "How do noise-cancelling headphones work?",
        "Active noise-cancelling headphones use small microphones to pick up ambient sound. A chip then generates a sound wave that is the mirror image of the noise, with the same amplitude but opposite phase, and plays it through the speakers. When the two waves meet, they largely cancel each other out. This works best for steady, low-frequency noise like engine hum, and less well for sudden sounds or voices.",
    ),
    (
        "Why should I back up my files?",
        "Hard drives fail, laptops get lost or stolen, files are deleted by mistake, and ransomware can encrypt everything you own. A backup is the only reliable protection against all of these. Keep at least one copy on a different device and one in a different place, make backups automatic, and occasionally test restoring a file, so you know the backup actually works when you need it.",
    ),
]

# -- translation pairs ----------------------------------------------------------------------------------

TRANSLATIONS = [
    (
        "今天的会议改到下午三点，请大家准时参加。",
        "Today's meeting has been moved to 3 p.m. Please be on time.",
    ),
    (
        "这本书我读了三遍，每次都有新的收获。",
        "I have read this book three times, and I learn something new every time.",
    ),
    (
        "请把文件保存到共享文件夹，并在群里通知我。",
        "Please save the file to the shared folder and let me know in the group chat.",
    ),
    (
        "如果明天下雨，我们就把活动改到室内。",
        "If it rains tomorrow, we will move the event indoors.",
    ),
    (
        "他虽然工作很忙，但每周都会抽时间陪父母吃饭。",
        "Although he is very busy at work, he makes time every week to have dinner with his parents.",
    ),
    (
        "这台机器的耗电量比旧型号低了百分之三十。",
        "This machine uses thirty percent less power than the old model.",
    ),
    (
        "我们需要在月底之前完成测试并提交报告。",
        "We need to finish testing and submit the report before the end of the month.",
    ),
    (
        "请问去火车站应该坐几路公交车？",
        "Excuse me, which bus should I take to get to the train station?",
    ),
    ("这道菜有点辣，你可以吗？", "This dish is a bit spicy. Is that okay for you?"),
    (
        "软件更新后，应用启动速度明显变快了。",
        "After the software update, the app starts noticeably faster.",
    ),
    (
        "她从小就对天文学感兴趣，后来成为了一名研究员。",
        "She was interested in astronomy from an early age and later became a researcher.",
    ),
    (
        "为了保护环境，超市不再免费提供塑料袋。",
        "To protect the environment, the supermarket no longer offers free plastic bags.",
    ),
    ("这个问题比我们想象的要复杂得多。", "This problem is much more complicated than we expected."),
    (
        "感谢您的耐心等待，您的订单已经发货。",
        "Thank you for your patience. Your order has been shipped.",
    ),
    (
        "模型在中文任务上的表现有了显著提升。",
        "The model's performance on Chinese tasks has improved significantly.",
    ),
    (
        "周末我打算去郊外爬山，你要一起去吗？",
        "I'm planning to go hiking outside the city this weekend. Do you want to come?",
    ),
    ("请勿在图书馆内大声喧哗。", "Please do not speak loudly in the library."),
    (
        "这份合同需要双方签字后才能生效。",
        "This contract takes effect only after both parties have signed it.",
    ),
    (
        "由于天气原因，航班推迟了两个小时。",
        "Due to the weather, the flight was delayed by two hours.",
    ),
    ("学习新技能最好的办法是边做边学。", "The best way to learn a new skill is to learn by doing."),
    (
        "他把旧手机送给了正在上大学的表弟。",
        "He gave his old phone to his cousin, who is in college.",
    ),
    ("这家餐厅的招牌菜是清蒸鲈鱼。", "The signature dish of this restaurant is steamed sea bass."),
    (
        "请在表格中填写您的姓名和联系方式。",
        "Please fill in your name and contact information on the form.",
    ),
    (
        "我们的目标是让每个孩子都能享受到优质教育。",
        "Our goal is for every child to have access to a good education.",
    ),
    ("服务器在凌晨两点进行例行维护。", "The server undergoes routine maintenance at 2 a.m."),
    (
        "读万卷书，不如行万里路。",
        "Traveling ten thousand miles is better than reading ten thousand books.",
    ),
    (
        "这款耳机的续航时间长达三十个小时。",
        "These headphones have a battery life of up to thirty hours.",
    ),
    ("请大家注意安全，不要在河边玩耍。", "Please stay safe and do not play by the river."),
    (
        "我对这个结果很满意，谢谢大家的努力。",
        "I am very pleased with this result. Thank you all for your hard work.",
    ),
    (
        "数据显示，今年的游客人数已恢复到疫情前的水平。",
        "The data show that visitor numbers this year have returned to pre-pandemic levels.",
    ),
    (
        "该功能目前仍处于测试阶段，可能存在问题。",
        "This feature is still in testing and may have issues.",
    ),
    (
        "他每天早上六点起床，先跑步，再吃早饭。",
        "He gets up at six every morning, goes for a run, and then has breakfast.",
    ),
]

# -- building blocks for the templates ------------------------------------------------------------------

ZH_CITIES = [
    "北京",
    "上海",
    "广州",
    "深圳",
    "成都",
    "杭州",
    "武汉",
    "西安",
    "南京",
    "重庆",
    "天津",
    "苏州",
    "长沙",
    "郑州",
    "青岛",
    "厦门",
    "昆明",
    "哈尔滨",
    "大连",
    "合肥",
    "福州",
    "南宁",
    "贵阳",
    "兰州",
    "济南",
    "太原",
    "石家庄",
    "南昌",
    "宁波",
    "无锡",
    "佛山",
    "东莞",
    "珠海",
    "洛阳",
]
EN_CITIES = [
    "Lisbon",
    "Toronto",
    "Nairobi",
    "Oslo",
    "Melbourne",
    "Denver",
    "Seoul",
    "Lyon",
    "Glasgow",
    "Porto",
    "Vancouver",
    "Auckland",
    "Cape Town",
    "Kraków",
    "Valencia",
    "Austin",
    "Dublin",
    "Singapore",
    "Helsinki",
    "Montreal",
    "Edinburgh",
    "Kyoto",
    "Santiago",
    "Tallinn",
]
ZH_SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
)
ZH_GIVEN = [
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "磊",
    "洋",
    "艳",
    "勇",
    "军",
    "杰",
    "娟",
    "涛",
    "明",
    "超",
    "秀英",
    "霞",
    "平",
    "刚",
    "桂英",
    "晨",
    "雪",
    "婷",
    "宇",
    "浩然",
    "子涵",
    "欣怡",
    "思远",
    "佳琪",
    "一鸣",
    "梓萱",
    "俊杰",
    "雨桐",
    "文博",
    "若曦",
    "嘉怡",
    "志强",
    "海燕",
    "建国",
    "丽华",
]
EN_NAMES = [
    "Alice",
    "Ben",
    "Carla",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Isabel",
    "James",
    "Kenji",
    "Laura",
    "Mateo",
    "Nadia",
    "Oliver",
    "Priya",
    "Quinn",
    "Rosa",
    "Samuel",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Yusuf",
    "Zoe",
    "Marta",
    "Leon",
    "Ines",
    "Tomás",
    "Aisha",
]
ZH_PRODUCTS = [
    ("笔记本电脑", "开机后屏幕闪烁", "12"),
    ("无线耳机", "左耳没有声音", "6"),
    ("电饭煲", "煮饭时总是夹生", "12"),
    ("空气净化器", "运转时有很大的噪音", "24"),
    ("智能手表", "充不进电", "12"),
    ("咖啡机", "出水很慢", "12"),
    ("扫地机器人", "总是卡在床底下", "12"),
    ("电动牙刷", "充满电只能用两天", "6"),
    ("显示器", "出现一条竖线", "36"),
    ("机械键盘", "有几个键失灵", "12"),
    ("洗衣机", "脱水时晃动得厉害", "36"),
    ("路由器", "隔一会儿就断网", "24"),
    ("电热水壶", "底部漏水", "12"),
    ("吹风机", "用几分钟就自动断电", "12"),
    ("投影仪", "画面偏暗", "24"),
]
EN_PRODUCTS = [
    ("laptop", "the screen flickers after startup", "12"),
    ("wireless earbuds", "the left bud has no sound", "6"),
    ("rice cooker", "the rice is always undercooked", "12"),
    ("air purifier", "it makes a loud rattling noise", "24"),
    ("smartwatch", "it won't charge", "12"),
    ("coffee machine", "the water comes out very slowly", "12"),
    ("robot vacuum", "it keeps getting stuck under the bed", "12"),
    ("monitor", "there is a vertical line on the screen", "36"),
    ("keyboard", "several keys don't respond", "12"),
    ("router", "the connection drops every few minutes", "24"),
    ("kettle", "it leaks from the bottom", "12"),
    ("projector", "the picture is too dark", "24"),
]
ZH_INDICATORS = [
    ("地区生产总值", "亿元"),
    ("社会消费品零售总额", "亿元"),
    ("进出口总额", "亿元"),
    ("新能源汽车产量", "万辆"),
    ("接待游客", "万人次"),
    ("城镇新增就业", "万人"),
    ("规模以上工业增加值", "亿元"),
    ("快递业务量", "亿件"),
    ("固定资产投资", "亿元"),
    ("粮食产量", "万吨"),
    ("新建保障性住房", "万套"),
    ("地铁客运量", "亿人次"),
]
EN_INDICATORS = [
    ("retail sales", "million dollars"),
    ("new housing starts", "units"),
    ("tourist arrivals", "thousand visitors"),
    ("exports", "million euros"),
    ("electric car registrations", "vehicles"),
    ("public transport trips", "million trips"),
    ("new business registrations", "companies"),
    ("wind power output", "gigawatt-hours"),
]
ZH_REASONS = [
    "消费市场持续回暖，节假日效应明显",
    "重点项目加快推进，投资拉动作用增强",
    "外贸企业积极开拓新兴市场",
    "数字经济快速发展，新业态不断涌现",
    "一系列稳增长政策逐步落地见效",
    "文旅融合带动客流明显增加",
    "产业链上下游协同发展，产能稳步释放",
    "营商环境持续优化，市场主体活力增强",
]
ZH_OUTLOOKS = [
    "下半年经济有望延续稳中向好的态势，但外部环境的不确定性仍需关注",
    "要继续扩大有效需求，巩固回升向好的基础",
    "后续应加大对中小企业的支持力度，稳定就业预期",
    "随着新项目陆续投产，相关指标有望保持较快增长",
    "需要警惕原材料价格波动对企业利润的挤压",
]
EN_REASONS = [
    "strong demand over the holiday season",
    "lower energy prices",
    "a rebound in international travel",
    "new factories coming online",
    "government incentives for small businesses",
    "a mild winter",
]
EN_OUTLOOKS = [
    "analysts expect growth to slow slightly in the coming quarter",
    "officials said the figures show the local economy is on a solid footing",
    "economists warned that higher interest rates could weigh on spending later in the year",
    "the chamber of commerce called the results encouraging but uneven across sectors",
]
ZH_WEATHER = [
    "晴",
    "多云",
    "阴",
    "小雨",
    "中雨",
    "雷阵雨",
    "阵雨",
    "小雪",
    "雾",
    "晴转多云",
    "多云转阴",
]
EN_WEATHER = [
    "sunny",
    "partly cloudy",
    "overcast",
    "light rain",
    "heavy showers",
    "thunderstorms",
    "fog in the morning",
    "light snow",
]
ZH_TEAMS = [
    "海港",
    "申花",
    "国安",
    "泰山",
    "蓉城",
    "三镇",
    "亚泰",
    "津门虎",
    "梅州客家",
    "浙江",
    "河南",
    "青岛西海岸",
]
EN_TEAMS = [
    "Rovers",
    "United",
    "Athletic",
    "City",
    "Wanderers",
    "Rangers",
    "Harriers",
    "Albion",
    "Town",
    "Hotspurs",
]
ZH_SUBJECTS = ["数学", "物理", "化学", "英语", "语文", "历史", "地理", "生物", "编程", "美术"]
ZH_DISHES = [
    "宫保鸡丁",
    "鱼香肉丝",
    "麻婆豆腐",
    "番茄炒蛋",
    "回锅肉",
    "清炒西兰花",
    "糖醋排骨",
    "水煮鱼",
    "酸辣土豆丝",
    "红烧茄子",
    "白切鸡",
    "干煸四季豆",
]
EN_DISHES = [
    "mushroom risotto",
    "grilled salmon",
    "lentil soup",
    "chicken curry",
    "vegetable lasagna",
    "beef stew",
    "shrimp tacos",
    "falafel wrap",
]
ZH_SYMPTOMS = [
    ("咳嗽", "三天", "嗓子有点疼，晚上咳得厉害"),
    ("头痛", "一周", "下午比较严重，看电脑时间长了更明显"),
    ("胃疼", "两天", "吃完饭以后隐隐作痛"),
    ("失眠", "半个月", "躺下一两个小时都睡不着"),
    ("膝盖疼", "一个月", "上下楼梯时特别明显"),
    ("皮肤过敏", "四天", "胳膊上起了红疹，很痒"),
]
TECH_TERMS_ZH = [
    ("缓存", "把计算或读取代价高的结果暂时保存起来，下次直接使用"),
    ("索引", "为数据建立额外的查找结构，以加快查询速度"),
    ("负载均衡", "把请求分配到多台服务器上，避免单台机器过载"),
    ("容器", "把应用及其依赖打包在一起，在不同环境中以相同方式运行"),
    ("消息队列", "在生产者和消费者之间暂存消息，实现异步处理和削峰填谷"),
    ("单元测试", "针对最小的可测试单元编写的自动化测试"),
    ("持续集成", "开发者频繁地把代码合并到主干，并自动运行构建和测试"),
    ("哈希函数", "把任意长度的输入映射为固定长度输出的函数"),
    ("死锁", "两个或多个线程互相等待对方释放资源而都无法继续执行的状态"),
    ("微服务", "把一个应用拆分成多个可以独立部署的小服务"),
    ("正则表达式", "用一种模式语言来描述和匹配字符串"),
    ("量化", "用更少的比特表示模型权重，以减小体积、加快推理"),
]
